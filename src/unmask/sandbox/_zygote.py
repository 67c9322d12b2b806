"""The trusted process that lives inside the sandbox and forks one child per untrusted program.

Run as a script (``python -I _zygote.py TMP_ROOT``) by :mod:`unmask.sandbox.launcher`, usually inside a
bubblewrap namespace. It reads length-prefixed JSON requests on fd 0 and answers on fd 1. For each request it
forks a child from its own clean state, the child drops to the request's unprivileged uid, applies rlimits and
runs the program (an interpreter installed where that uid cannot go is reached through descriptors the child
opens while still root: see :func:`anchor_imports`); the zygote relays capped output, enforces the wall clock,
kills every process of that uid and reaps them before it answers. The zygote itself never runs untrusted code.

Only the standard library is used here: this file runs under ``python -I`` with no project on the path.
The host imports :func:`sweep_uid` and the framing helpers from here too, so both sides share one copy.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import select
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time

# Modules most test programs import: loaded once here so a forked child starts warm. Importing them runs
# only standard-library code, never the untrusted program.
PRELOAD = (
    "abc", "array", "bisect", "collections", "copy", "dataclasses", "decimal", "enum", "fractions",
    "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "operator", "random", "re",
    "resource", "statistics", "string", "textwrap", "traceback", "types", "typing", "unicodedata",
)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024 * 1024
REPORT_CAP = 4096  # bytes kept from the child's report pipe (fd 3); a real report is one short line
EXIT_SETUP_FAILED = 125  # child exit code when it could not enter the sandbox (reported as infra_error)

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------------- framing
def write_message(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> dict | None:
    """One framed JSON message, or None at end of stream."""
    head = read_exact(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    body = read_exact(fd, size)
    if body is None:
        return None
    return json.loads(body)


# ----------------------------------------------------------------------------------------------- sweep
def sweep_uid(uid: int) -> None:
    """SIGKILL every process whose uid is ``uid`` (in this pid namespace), atomically w.r.t. fork.

    A helper process becomes ``uid`` and calls kill(-1): the kernel signals every process that uid may
    signal while holding the task-list lock, so a fork bomb cannot outrun it. Needs root; uid must be a
    sandbox-only uid, never one that owns real processes.
    """
    if uid == 0:
        raise ValueError("refusing to sweep uid 0")
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


# ---------------------------------------------------------------------------------- interpreter access
# A program runs as a uid that owns nothing and is in no group, so only the "other" permission bits apply to
# it. An interpreter installed below a directory others may not search (pyenv under /root, mode 0700) is then
# out of its reach: every import the zygote did not preload would fail. So the child opens such sys.path
# directories while it is still root and points the import system at /proc/self/fd/N. A process may always
# follow its own descriptors, and a lookup through one starts inside the directory: only the permissions of
# the directory and of what lies below it are checked, never those of the directories above it.


def _mode(path: str) -> int:
    return os.stat(path).st_mode


def unreachable(path: str, mode_of=_mode) -> bool:
    """True when a directory above ``path`` denies search to others, so a sandbox uid cannot reach it."""
    parent = os.path.dirname(path)
    while True:
        try:
            if not mode_of(parent) & stat.S_IXOTH:
                return True
        except OSError:
            return True
        if os.path.dirname(parent) == parent:
            return False
        parent = os.path.dirname(parent)


def unreachable_dirs(paths: list[str], mode_of=_mode) -> list[str]:
    """The directories among ``paths`` (sys.path) that a sandbox uid cannot reach, by name or after symlinks."""
    found = []
    for path in paths:
        try:
            if not (os.path.isabs(path) and stat.S_ISDIR(mode_of(path))):
                continue
        except OSError:
            continue  # sys.path may name what does not exist (python311.zip): nothing to import from there
        if unreachable(path, mode_of) or unreachable(os.path.realpath(path), mode_of):
            found.append(path)
    return found


def rewrite(path: str, anchors: dict[str, str]) -> str:
    """``path`` with its longest anchored prefix replaced by that anchor's /proc/self/fd path."""
    inside = [a for a in anchors if path == a or path.startswith(a.rstrip("/") + "/")]
    if not inside:
        return path
    best = max(inside, key=len)
    return anchors[best] + path[len(best):]


def anchor_imports(dirs: list[str]) -> None:
    """Open ``dirs`` (as root; O_PATH: a handle for lookups, nothing more) and send every import below them
    (sys.path and the search path of each loaded package) through the descriptors."""
    anchors = {d: f"/proc/self/fd/{os.open(d, os.O_PATH | os.O_DIRECTORY)}" for d in dirs}
    sys.path[:] = [rewrite(p, anchors) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):  # a namespace package's _NamespacePath follows its parent's by itself
            search[:] = [rewrite(p, anchors) for p in search]
    sys.path_importer_cache.clear()  # finders cached for the old names would keep using them


# ----------------------------------------------------------------------------------------------- child
def _child(req: dict, tmp: str, out_w: int, err_w: int, rep_w: int, devnull: int, anchored: list[str]) -> None:
    """Runs in the forked child: enter the sandbox, run the program, exit. Never returns.

    The phases run in this order, and the order is part of the sandbox: descriptors; import anchors and
    rlimits while still root; the uid drop; no-new-privs and the parent-death signal; directory and
    environment; a fresh interpreter state. Any failure before the program runs ends the child instead."""
    nonce = req["nonce"]
    try:
        _own_descriptors(out_w, err_w, rep_w, devnull)
        if anchored:  # while still root: the sandbox uid could not reach these directories by name
            anchor_imports(anchored)
        _set_limits(req)
        _drop_privileges(req["uid"])
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # set after setuid, which clears it
        os.chdir(tmp)
        _set_environment(req["env"], tmp)
        main = _fresh_main(tmp)
        program = req["program"]
        del req
    except BaseException as exc:  # could not enter the sandbox: never let the program run
        try:
            os.write(3, f"{nonce} {os.getpid()} infra {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)

    try:
        code = compile(program, "program.py", "exec")
        del program
        exec(code, main.__dict__)
    except SystemExit as exc:
        _flush()
        if exc.code is None or exc.code == 0:
            os._exit(0)  # early exit: no completion marker, so the host sees status "failed"
        _report(nonce, "exc SystemExit")
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        _flush()
        os._exit(exc.code if isinstance(exc.code, int) and 0 < exc.code < 256 else 1)
    except BaseException as exc:
        import traceback

        try:  # hide the runner's own frame: the traceback starts in program.py, as with `python program.py`
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            traceback.print_exception(type(exc), exc, tb)
        except BaseException:
            pass
        _report(nonce, f"exc {type(exc).__name__}")
        _flush()
        os._exit(1)
    _finish(nonce)


def _own_descriptors(out_w: int, err_w: int, rep_w: int, devnull: int) -> None:
    """A session of its own, fds 0-3 (stdin from /dev/null, stdout, stderr, report pipe) and nothing else."""
    os.setsid()  # own process group and session: no controlling tty, killable as a group
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(rep_w, 3)
    for name in os.listdir("/proc/self/fd"):  # close the zygote's control channel and everything else
        fd = int(name)
        if fd > 3:
            try:
                os.close(fd)
            except OSError:
                pass


def _set_limits(req: dict) -> None:
    import resource

    mem = req["memory_mb"] * 1024 * 1024
    cpu = int(req["timeout"]) + 1
    limits = (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, req["max_processes"]),
        (resource.RLIMIT_FSIZE, req["max_file_bytes"]),
        (resource.RLIMIT_NOFILE, req["max_open_files"]),
        (resource.RLIMIT_CORE, 0),
    )
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def _drop_privileges(uid: int) -> None:
    """Become ``uid`` (no groups) for good when running as root; without root there is nothing to drop."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise RuntimeError("still root after dropping privileges")


def _set_environment(env: dict, tmp: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.environ["HOME"] = tmp
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None


def _fresh_main(tmp: str):
    """Fresh randomness, text streams on fds 0-2, argv and sys.path of ``python program.py``, and the empty
    ``__main__`` module the program runs in."""
    import io
    import random
    import types

    random.seed()  # the zygote's state was seeded once; each program gets fresh entropy
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.argv = ["program.py"]
    sys.path[0:0] = [tmp]
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = __builtins__
    module.__dict__["__file__"] = os.path.join(tmp, "program.py")
    sys.modules["__main__"] = module
    return module


def _report(nonce: str, line: str) -> None:
    try:
        # the pid lets the host ignore markers from processes the program forked
        os.write(3, f"{nonce} {os.getpid()} {line}\n".encode())
    except OSError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _finish(nonce: str) -> None:
    """The program ran to its end. Finish like a normal interpreter exit (non-daemon threads, atexit),
    then write the completion marker; anything that fails on the way is reported as an error instead."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as exc:
        _report(nonce, f"exc {type(exc).__name__}")
        _flush()
        os._exit(1)
    _report(nonce, "ok")
    os._exit(0)


# ---------------------------------------------------------------------------------------------- zygote
def _reap_all(child: int, uid: int, deadline: float) -> int | None:
    """Kill everything of ``uid``, then reap until no descendant is left; the child's wait status."""
    status = None
    _kill_leftovers(child, uid)
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == child:
            status = st
        elif pid == 0:  # something is still dying (or was forked during the sweep): sweep again
            if time.monotonic() > deadline:
                return status
            time.sleep(0.0005)
            _kill_leftovers(child, uid)


def _kill_leftovers(child: int, uid: int) -> None:
    if os.geteuid() == 0:
        sweep_uid(uid)
    else:  # no uid sweep without root: kill the child's process group, what we can see directly
        try:
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass


def handle(req: dict, tmp_root: str, anchored: list[str]) -> dict:
    uid = req["uid"]
    cap = req["output_cap"]
    tmp = tempfile.mkdtemp(prefix="run-", dir=tmp_root)
    os.chmod(tmp, 0o700)
    if os.geteuid() == 0:
        os.chown(tmp, uid, uid)
    devnull = os.open(os.devnull, os.O_RDWR)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(req, tmp, out_w, err_w, rep_w, devnull, anchored)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    for fd in (out_w, err_w, rep_w, devnull):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    buffers = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
    limits = {out_r: cap, err_r: cap, rep_r: REPORT_CAP}
    overflow = {out_r: False, err_r: False, rep_r: False}
    poller = select.poll()
    for fd in (out_r, err_r, rep_r, pidfd):
        poller.register(fd, select.POLLIN)
    open_fds = {out_r, err_r, rep_r}
    deadline = start + req["timeout"]
    timed_out = False
    exited = False

    def drain(fd: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            poller.unregister(fd)
            open_fds.discard(fd)
            return
        room = limits[fd] - len(buffers[fd])
        if len(data) > room:
            overflow[fd] = True  # keep reading so the writer never blocks, but keep only the head
            data = data[: max(room, 0)]
        buffers[fd] += data

    while not exited or open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = not exited
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
                end = time.monotonic()
                poller.unregister(pidfd)
            else:
                drain(fd)
        if exited and open_fds:
            break  # leftovers (a daemon holding stdout) are killed below, then the pipes are drained
    if not exited:
        end = time.monotonic()
    status = _reap_all(pid, uid, time.monotonic() + 5.0)
    # every writer is dead now, so these reads reach end-of-file quickly
    drain_deadline = time.monotonic() + 1.0
    while open_fds and time.monotonic() < drain_deadline:
        for fd, _ in poller.poll(100):
            if fd != pidfd:
                drain(fd)
    for fd in (out_r, err_r, rep_r, pidfd):
        os.close(fd)
    shutil.rmtree(tmp, ignore_errors=True)
    exit_code = signal_number = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            signal_number = os.WTERMSIG(status)
    return {
        "child_pid": pid,
        "exit_code": exit_code,
        "signal": signal_number,
        "timed_out": timed_out,
        "duration": end - start,
        "stdout": base64.b64encode(bytes(buffers[out_r])).decode(),
        "stderr": base64.b64encode(bytes(buffers[err_r])).decode(),
        "report": bytes(buffers[rep_r]).decode("utf-8", "replace"),
        "stdout_truncated": overflow[out_r],
        "stderr_truncated": overflow[err_r],
    }


def main(argv: list[str]) -> int:
    tmp_root = argv[1]
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a program (daemons) come back to us to be reaped
    _prctl(PR_SET_DUMPABLE, 0)
    for name in PRELOAD:
        __import__(name)
    anchored = unreachable_dirs(sys.path) if os.geteuid() == 0 else []  # without root there is no uid drop
    write_message(ctl_out, {"ready": True, "pid": os.getpid(), "anchored": anchored})
    while True:
        req = read_message(ctl_in)
        if req is None:
            return 0
        try:
            resp = handle(req, tmp_root, anchored)
        except Exception as exc:  # a zygote failure is the sandbox's fault: say so, keep serving
            resp = {"infra": f"{type(exc).__name__}: {exc}"}
        write_message(ctl_out, resp)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
