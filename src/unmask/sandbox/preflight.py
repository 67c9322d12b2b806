"""The sandbox checks itself before it scores anything.

A sandbox that cannot run the standard library (say, the unprivileged uid cannot read the interpreter) would
score every program "failed": a fault of the sandbox recorded as a fault of the model. So before the first
program of a process in each isolation, a tiny program that imports and uses common standard-library modules
runs in the same sandbox. If it does not pass, every run is an ``infra_error`` that names the cause and the
fix, never a verdict about the program.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from unmask.sandbox.result import ExecutionResult

if TYPE_CHECKING:
    from unmask.sandbox.launcher import Isolation

log = logging.getLogger("unmask.sandbox")

# Modules that programs under test import all the time, some of which the zygote does not preload (threading,
# subprocess, glob): they are found on the interpreter's path only when the sandboxed uid can reach it.
PROGRAM = """\
import collections, glob, itertools, json, math, re, subprocess, threading
box = []
worker = threading.Thread(target=box.append, args=(json.loads('[1, 2]'),))
worker.start()
worker.join()
assert box == [[1, 2]]
assert collections.Counter('abca')['a'] == 2 and list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]
assert math.isqrt(17) == 4 and re.fullmatch(r'a+b', 'aab') and glob.escape('a*') == 'a[*]'
assert callable(subprocess.run)
open('preflight.txt', 'w').write('ok')
assert open('preflight.txt').read() == 'ok'
"""
TIMEOUT = 30.0  # generous: a loaded machine must not turn a working sandbox into a broken one
MEMORY_MB = 512

Execute = Callable[..., ExecutionResult]

_lock = threading.Lock()
_problems: dict[str, str | None] = {}  # isolation mode -> None (works) or the message every run reports


def _cause(result: ExecutionResult) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    detail = lines[-1].strip() if lines else "no output"
    return f"{result.status}: {detail}"


def _fix(iso: Isolation) -> str:
    if iso.namespaces:
        return ("bubblewrap runs but its sandbox cannot run Python; compare with UNMASK_SANDBOX=rlimits and "
                "report the error above")
    return ("install bubblewrap (apt-get install -y bubblewrap), or make the interpreter and the virtualenv "
            "readable by other users (the sandbox's uid owns nothing and is in no group)")


def problem(iso: Isolation, execute: Execute) -> str | None:
    """None when the sandbox gives correct verdicts in ``iso``; else the message every run must report.

    Runs the check once per process and isolation mode (``execute`` runs one program in that sandbox). A pass or
    a failure is remembered; a timeout or an infra error of the check itself is not (it may be the load of
    the moment), so the next run checks again.
    """
    with _lock:
        if iso.mode in _problems:
            return _problems[iso.mode]
        result = execute(PROGRAM, timeout=TIMEOUT, memory_mb=MEMORY_MB)
        if result.passed:
            _problems[iso.mode] = None
            return None
        message = (f"sandbox preflight failed in {iso.mode} mode ({iso.reason}): a program importing the "
                   f"standard library did not pass, {_cause(result)}. Fix: {_fix(iso)}")
        if result.status == "failed":
            _problems[iso.mode] = message
            log.error("unmask.sandbox: %s; every run is reported as infra_error", message)
        return message


def forget() -> None:
    """Drop the remembered outcomes (tests; or after fixing the machine in a long-lived process)."""
    with _lock:
        _problems.clear()
