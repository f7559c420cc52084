"""doit integration: the ``engines`` task generator and the engines-status/-gc/-key commands.

A project's ``dodo.py`` needs two lines::

    from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401

Importing this package does not import doit, ONNX or ONNX Runtime.
"""

from .tasks import DB_ENV, EngineUpToDate, clean_engine, compile_backbone, doit_config, engine_tasks, task_engines

DOIT_CONFIG = doit_config()

__all__ = [
    "DB_ENV",
    "DOIT_CONFIG",
    "EngineUpToDate",
    "clean_engine",
    "compile_backbone",
    "doit_config",
    "engine_tasks",
    "task_engines",
]
