"""How doit was started, told from ``sys.argv`` and the process tree, without importing doit.

- :func:`_parallel_run`: ``doit -n N`` (N > 1), where the actions run in worker processes;
- :func:`_in_worker`: this process is such a worker;
- :func:`_command_runs_tasks`: this process is doit's command line about to run tasks (not
  ``doit list``, ``doit clean``, an ``engines-*`` command, a library call or a test).
"""

from __future__ import annotations

import os
import sys


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _parallel_run() -> bool:
    """Whether doit was started with ``-n N`` (N > 1): actions then run in worker processes."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-n", "--process") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--process="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-n") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit() and int(value) > 1:
            return True
    return False


# doit's own commands that generate tasks without running any (doit.doit_cmd.DoitMain.DOIT_CMDS
# but ``run``), and this package's engines-* commands: they must not pay for hashing
_NO_RUN_COMMANDS = frozenset({"help", "list", "info", "clean", "forget", "ignore", "dumpdb", "strace",
                              "tabcompletion", "reset-dep", "auto"})


def _command_runs_tasks() -> bool:
    """Whether this process is doit's command line running tasks (``doit``, ``doit run``, ``doit TASK``).

    doit takes its first argument as the command when it names one, else runs ``run``; the
    check is by name, so that nothing is imported for it. A plugin command this list does not
    know counts as a run: it costs background hashing only, never a wrong answer.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program != "doit" and getattr(spec, "name", None) != "doit.__main__":
        return False  # a library call or a test: hashing starts at the first check, as before
    args = sys.argv[1:]  # ``run``, a task name or an option ("-n") all mean a run
    return not args or (args[0] not in _NO_RUN_COMMANDS and not args[0].startswith("engines-"))


def _task_option(basename: str, long: str) -> str | None:
    """The value of ``--<long> VALUE`` (or ``--<long>=VALUE``) given to a task of ``basename`` on doit's command line.

    doit parses a task's own options after its name (``doit engines --config PATH``), but
    only once every task was generated: the generator, which needs the config first, reads
    them here. Only options after ``basename`` or one of its ``basename:<model>`` tasks count
    (the last one wins, as for doit's options); in a library call or a test, none.
    """
    main = sys.modules.get("__main__")
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program != "doit" and getattr(getattr(main, "__spec__", None), "name", None) != "doit.__main__":
        return None
    value, owned, args = None, False, sys.argv[1:]
    flag = f"--{long}"
    for index, arg in enumerate(args):
        if index and args[index - 1] == flag:
            continue  # the value of the option before
        if not arg.startswith("-"):
            owned = arg == basename or arg.startswith(f"{basename}:")
        elif owned and arg == flag and index + 1 < len(args):
            value = args[index + 1]
        elif owned and arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value
