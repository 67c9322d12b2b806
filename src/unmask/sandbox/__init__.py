"""Isolated execution of untrusted Python programs (model-generated code) → :class:`ExecutionResult`.

Use ``run(program)`` for one program (a fresh sandbox each time) and ``run_many(programs)`` for batches
(a pool of pre-forked zygotes, one per core, results in input order).

How a program runs: a trusted zygote interpreter is started inside bubblewrap with new pid, network, IPC,
UTS (and cgroup) namespaces, a read-only bind of ``/``, a fresh ``/proc``, a minimal ``/dev``, a small
private tmpfs on ``/tmp``, an empty tmpfs over ``/root``, an empty environment and only the capabilities
needed to drop privileges. For each program the zygote forks a child that starts a new session, points
stdin at /dev/null, sets rlimits (address space = ``memory_mb``, CPU seconds, processes, file size, open
files, no core dumps), drops to a uid of its own (from a range no account uses; never root), sets
no_new_privs, moves into a fresh private directory, replaces the environment and runs the program in a
fresh ``__main__``. The zygote never runs untrusted code, so every program starts from the same clean
state; modules imported by one program are never seen by the next. The zygote drains stdout/stderr all
the way (keeping the first ``Limits.output_limit`` bytes of each), enforces the wall clock, then kills
every process of the run's uid (a kill(-1) made as that uid: atomic with respect to fork) and reaps
them as a child subreaper, so nothing the program started (fork bombs, double-forked daemons) outlives
the run. The host enforces a second wall clock on the zygote itself and kills its namespace if it hangs.

Verdicts: "passed" only when the program ran to the end of its code and exited 0. The child reports
completion on a separate pipe (fd 3) with a random per-run nonce checked by the host, so printing a
marker, ``sys.exit(0)``, ``exit()``, ``raise SystemExit`` or ``os._exit(0)`` before the end is "failed"
with error_kind "early_exit". A fault of the sandbox itself is "infra_error", never a failed program.

Protects against (tested in tests/test_sandbox.py, in both modes below unless said): infinite loops in
Python or C, ignored signals, memory and fork bombs, daemons that try to outlive the run, killing the parent,
writing or deleting outside the private directory (world-writable places: namespaces only), network access
(no interfaces besides a down loopback: namespaces only), reading the parent's environment or root-only
files, output floods and invalid UTF-8, reading stdin, early exits.

Does NOT protect against: kernel exploits or bubblewrap bugs (this is not a VM); a program that finds the
nonce in its own memory (e.g. via ``gc``) and writes it to fd 3 — the marker stops accidental and naive
early exits, not a deliberate attacker reading its own address space; reading world-readable files of the
host (the root is visible read-only, except ``/root``); CPU/memory contention with concurrent runs (no
cgroup limits — the rlimits are per process, except processes which are per uid); side channels.

Modes: "namespaces" (all of the above) where bubblewrap works, else the "rlimits" fallback, with a warning
logged once on logger "unmask.sandbox". ``mode=`` of run/run_many, else $UNMASK_SANDBOX, chooses: "auto"
(the default), "rlimits" (force the fallback, e.g. to test it where bubblewrap works) or "namespaces" (never
fall back: where bubblewrap cannot work every run is an infra_error).

The fallback runs the zygote on the host. Each child still gets the rlimits, its own uid, no_new_privs, a
private 0700 directory (under a root-owned 0711 one), the scrubbed environment and the uid sweep. But the
network is NOT isolated, the host's /tmp and other world-writable places are writable by the program, and
there is no pid namespace. When not root there is no uid drop either and leftover processes are killed by
process group only. The interpreter: the sandbox uid owns nothing and is in no group, so an interpreter or
virtualenv installed below a directory others may not search (pyenv under ``/root``, mode 0700) is out of
its reach — every import the zygote had not preloaded (threading, subprocess, glob, numpy) would fail and be
scored as the program's fault. So the child, while still root, opens each such ``sys.path`` directory
(O_PATH, close-on-exec) and rewrites ``sys.path`` and the loaded packages' ``__path__`` to
``/proc/self/fd/N``: a lookup through a process's own descriptor starts inside the directory, so the
directories above it are never checked, while the files' own permissions still are (nothing there becomes
writable; only world-readable files can be read). What this widens: the program can read the world-readable
part of those directories and of their parents up to the one that denied search (``..`` climbs from a
descriptor: all of ``/root/.pyenv``, never the rest of ``/root``). What it cannot do: start a new Python
interpreter (``sys.executable`` lies behind the same directory and exec needs its path: PermissionError),
show source lines of preloaded standard-library modules in tracebacks, or import after the program closes
descriptors 4 and up itself.

Preflight (:mod:`unmask.sandbox.preflight`): before the first program of a process in each mode, a small
program that imports and uses the standard library (threading, subprocess, glob, json, ...) runs in the
sandbox. If it does not pass, the sandbox cannot give correct verdicts, and every run is an infra_error
whose message names the cause and the fix — never a "failed" program.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Sequence

from unmask.sandbox.launcher import Isolation, Limits, Zygote, isolation
from unmask.sandbox.result import ExecutionResult, classify, exception_from_stderr, infra_error

__all__ = [
    "ExecutionResult", "Isolation", "Limits", "Zygote", "classify", "exception_from_stderr", "isolation",
    "run", "run_many",
]

MIN_MEMORY_MB = 32


def _validate(timeout: float, memory_mb: int) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int):
        raise TypeError(f"memory_mb must be an int, got {type(memory_mb).__name__}")
    if memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be >= {MIN_MEMORY_MB} (the interpreter needs it), got {memory_mb}")


def _check_program(program: object, where: str = "program") -> None:
    if not isinstance(program, str):
        raise TypeError(f"{where} must be a str of Python source, got {type(program).__name__}")


def _resolve(mode: str | None) -> Isolation | str:
    """The isolation for ``mode`` (see :func:`isolation`), or why the sandbox cannot start in it."""
    try:
        return isolation(mode)
    except RuntimeError as exc:  # namespaces required but unavailable: no verdict is possible
        return f"could not start the sandbox: {exc}"


def run(program: str, *, timeout: float = 5.0, memory_mb: int = 1024, limits: Limits | None = None,
        mode: str | None = None) -> ExecutionResult:
    """Run one program in a fresh sandbox (new namespaces, new interpreter) and return its verdict.

    ``mode``: "auto", "namespaces" or "rlimits" (default: $UNMASK_SANDBOX, else auto).
    """
    _check_program(program)
    _validate(timeout, memory_mb)
    iso = _resolve(mode)
    if isinstance(iso, str):
        return infra_error(iso)
    return _run_fresh(program, float(timeout), memory_mb, limits, iso)


def _run_fresh(program: str, timeout: float, memory_mb: int, limits: Limits | None, iso: Isolation
               ) -> ExecutionResult:
    try:
        zygote = Zygote(limits, iso)
    except (OSError, RuntimeError) as exc:
        return infra_error(f"could not start the sandbox: {exc}")
    with zygote:
        return zygote.execute(program, timeout=timeout, memory_mb=memory_mb)


def run_many(
    programs: Sequence[str],
    *,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    progress: bool = False,
    limits: Limits | None = None,
    fresh: bool = False,
    mode: str | None = None,
) -> list[ExecutionResult]:
    """Run many programs on ``workers`` pre-forked zygotes (default: one per core); results in input order.

    ``fresh=True`` starts a new sandbox per program instead (slower, the simplest path). ``mode`` as in
    :func:`run`.
    """
    if isinstance(programs, str):
        raise TypeError("programs must be a sequence of str, got a single str")
    for i, program in enumerate(programs):
        _check_program(program, f"programs[{i}]")
    _validate(timeout, memory_mb)
    if workers is None:
        import os

        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    iso = _resolve(mode)
    if isinstance(iso, str):
        return [infra_error(iso) for _ in programs]
    n = len(programs)
    results: list[ExecutionResult | None] = [None] * n
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        todo.put(i)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="sandbox", unit="prog")
    bar_lock = threading.Lock()

    def worker() -> None:
        zygote: Zygote | None = None
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                if fresh:
                    results[i] = _run_fresh(programs[i], float(timeout), memory_mb, limits, iso)
                else:
                    if zygote is None or not zygote.alive:
                        try:
                            zygote = Zygote(limits, iso)
                        except (OSError, RuntimeError) as exc:
                            zygote = None
                            results[i] = infra_error(f"could not start the sandbox: {exc}")
                    if zygote is not None:
                        results[i] = zygote.execute(programs[i], timeout=float(timeout), memory_mb=memory_mb)
                if bar is not None:
                    with bar_lock:
                        bar.update(1)
        finally:
            if zygote is not None:
                zygote.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, max(n, 1)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if bar is not None:
        bar.close()
    out: list[ExecutionResult] = []
    for i, r in enumerate(results):
        out.append(r if r is not None else infra_error(f"programs[{i}] was not run (worker crashed)"))
    return out
