"""doit tasks of this repository: ``doit engines`` compiles or reuses the example corpus.

Choose another corpus with ``doit engines config=PATH`` or $PROVISIONING_CONFIG; put the
doit database elsewhere with $PROVISIONING_DOIT_DB (e.g. next to a CI-cached engine folder).
"""

from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401
