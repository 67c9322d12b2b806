"""Host side of the sandbox: probe what isolation the machine allows, start zygotes, run requests.

A :class:`Zygote` is one long-lived trusted interpreter (``_zygote.py``) started inside bubblewrap
namespaces when the kernel allows, or directly (rlimits + uid drop only) when it does not. The host
enforces a second, looser wall clock on every request: a zygote that does not answer in time is killed
with its whole namespace and the run is an ``infra_error``.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from unmask.sandbox import _zygote, preflight
from unmask.sandbox.result import ExecutionResult, classify, infra_error

log = logging.getLogger("unmask.sandbox")

ZYGOTE_SCRIPT = Path(_zygote.__file__).resolve()
# Each run gets its own uid from this range (well above any real account): its processes can then be
# found and killed by uid alone, its rlimit on processes counts only itself, and concurrent runs cannot
# signal or ptrace each other.
UID_BASE = 2_000_000_000
UID_SPAN = 1 << 24
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
HOST_GRACE = 10.0  # seconds the host waits past the program's timeout before declaring the zygote dead
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits besides the timeout and memory (which are arguments of run)."""

    max_processes: int = 64  # RLIMIT_NPROC for the run's uid (threads count too)
    max_file_bytes: int = 16 * 1024 * 1024  # RLIMIT_FSIZE
    max_open_files: int = 256  # RLIMIT_NOFILE
    output_limit: int = 64 * 1024  # bytes kept of stdout and of stderr each
    tmp_bytes: int = 64 * 1024 * 1024  # size of the private tmpfs (namespaced mode only)

    def __post_init__(self) -> None:
        for name in ("max_processes", "max_file_bytes", "max_open_files", "output_limit", "tmp_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_open_files < 8:
            raise ValueError(f"Limits.max_open_files must be >= 8 (for Python), got {self.max_open_files}")


@dataclass(frozen=True)
class Isolation:
    """What the machine allows: mode "namespaces" (bubblewrap) or "rlimits" (fallback), and why."""

    mode: str
    reason: str

    @property
    def namespaces(self) -> bool:
        return self.mode == "namespaces"


def _python_dirs() -> list[str]:
    """Directories the zygote needs (interpreter, venv, its own script), which may sit under a hidden mount."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))}
    dirs.add(str(ZYGOTE_SCRIPT.parent))
    return sorted(dirs)


def _reexpose(hidden: str) -> list[str]:
    """Re-expose read-only what the zygote needs below a mount point hidden by a tmpfs (/tmp is the programs'
    private scratch space, /root is root's home): e.g. a checkout or venv that lives under /tmp."""
    cmd: list[str] = []
    for d in _python_dirs():
        if d.startswith(hidden + "/"):
            parts = Path(d).relative_to(hidden).parts
            for k in range(1, len(parts)):  # traversable parents (bwrap would make them 0700)
                cmd += ["--perms", "0755", "--dir", str(Path(hidden, *parts[:k]))]
            cmd += ["--ro-bind", d, d]
    return cmd


def bwrap_command(limits: Limits) -> list[str]:
    """The bubblewrap prefix: new pid/net/ipc/uts (and cgroup) namespaces, read-only root, fresh /tmp."""
    cmd = [
        "bwrap",
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--ro-bind", "/", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        *_reexpose("/tmp"),
    ]
    if os.geteuid() == 0:
        # Keep only what the zygote needs to make run directories and drop to the run's uid.
        cmd += ["--cap-add", "CAP_SETUID,CAP_SETGID,CAP_CHOWN,CAP_FOWNER,CAP_DAC_OVERRIDE"]
    else:
        cmd += ["--unshare-user"]
    if os.path.isdir("/root"):
        cmd += ["--tmpfs", "/root", *_reexpose("/root")]  # hide root's home; re-expose what the zygote needs
    cmd += ["--clearenv", "--setenv", "PATH", SAFE_PATH, "--setenv", "LANG", "C.UTF-8", "--chdir", "/tmp"]
    return cmd


ENV_MODE = "UNMASK_SANDBOX"
MODES = ("auto", "namespaces", "rlimits")


@functools.lru_cache(maxsize=1)
def probe() -> Isolation:
    """Probe once whether bubblewrap can make the namespaces; log a warning when falling back."""
    if os.geteuid() != 0:
        reason = "not running as root: children cannot be moved to a separate uid"
    elif shutil.which("bwrap") is None:
        reason = "bwrap not found (apt-get install -y bubblewrap)"
    else:
        try:
            proc = subprocess.run(bwrap_command(Limits()) + ["--", sys.executable, "-I", "-c", "pass"],
                                  capture_output=True, timeout=30)
            if proc.returncode == 0:
                return Isolation("namespaces", "bubblewrap namespaces available")
            reason = f"bwrap failed: {proc.stderr.decode(errors='replace').strip()[:300]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"bwrap failed: {exc}"
    log.warning("unmask.sandbox: no namespace isolation (%s); falling back to rlimits + uid drop", reason)
    return Isolation("rlimits", reason)


def isolation(mode: str | None = None) -> Isolation:
    """The isolation runs get: ``mode``, else $UNMASK_SANDBOX, else "auto" (namespaces where the machine allows).

    "rlimits" forces the fallback (to test it where bubblewrap works); "namespaces" refuses to fall back
    (RuntimeError), for deployments where the weaker fallback is not acceptable.
    """
    source = "argument" if mode else ENV_MODE
    mode = mode or os.environ.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r} ({source})")
    if mode == "rlimits":
        return Isolation("rlimits", f"forced by {source}")
    found = probe()
    if mode == "namespaces" and not found.namespaces:
        raise RuntimeError(f"namespaces isolation required ({source}) but unavailable: {found.reason}")
    return found


class _UidPool:
    """Hands out sandbox uids not in use by this process (random, so other processes rarely collide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._rng = secrets.SystemRandom()

    def take(self) -> int:
        with self._lock:
            while True:
                uid = UID_BASE + self._rng.randrange(UID_SPAN)
                if uid not in self._used:
                    self._used.add(uid)
                    return uid

    def give(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


UIDS = _UidPool()


def _child_env() -> dict[str, str]:
    # Built from scratch: nothing of the parent's environment (tokens, keys) reaches the program.
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1"}


class Zygote:
    """One trusted zygote process; ``execute`` runs one program in a fresh fork of it."""

    def __init__(self, limits: Limits | None = None, iso: Isolation | None = None) -> None:
        self.limits = limits or Limits()
        self.iso = iso or isolation()
        self._host_tmp: str | None = None
        if self.iso.namespaces:
            cmd = bwrap_command(self.limits) + ["--", sys.executable, "-I", str(ZYGOTE_SCRIPT), "/tmp"]
        else:
            # Without a mount namespace the run directories live on the host, under a root-owned dir
            # that others may traverse but not list.
            self._host_tmp = tempfile.mkdtemp(prefix="unmask-sandbox-")
            os.chmod(self._host_tmp, 0o711)
            cmd = [sys.executable, "-I", str(ZYGOTE_SCRIPT), self._host_tmp]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=_child_env(), start_new_session=True)
        ready = self._receive(STARTUP_TIMEOUT)
        if not ready or not ready.get("ready"):
            self.close()
            raise RuntimeError(f"sandbox zygote failed to start ({self.iso.mode})")
        self.anchored: list[str] = ready.get("anchored", [])  # sys.path entries reached through descriptors

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _receive(self, timeout: float) -> dict | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        try:
            return _zygote.read_message(fd)
        except (OSError, ValueError):
            return None

    def execute(self, program: str, *, timeout: float, memory_mb: int) -> ExecutionResult:
        """The verdict of ``program``; an infra_error for every program while the preflight fails."""
        problem = preflight.problem(self.iso, self._execute)
        if problem is not None:
            return infra_error(problem)
        return self._execute(program, timeout=timeout, memory_mb=memory_mb)

    def _execute(self, program: str, *, timeout: float, memory_mb: int) -> ExecutionResult:
        if not self.alive:
            return infra_error("sandbox zygote is not running")
        uid = UIDS.take()
        nonce = secrets.token_hex(16)
        request = {
            "program": program, "timeout": timeout, "memory_mb": memory_mb, "uid": uid, "nonce": nonce,
            "env": _child_env(), "output_cap": self.limits.output_limit,
            "max_processes": self.limits.max_processes, "max_file_bytes": self.limits.max_file_bytes,
            "max_open_files": self.limits.max_open_files,
        }
        start = time.monotonic()
        try:
            assert self.proc.stdin is not None
            _zygote.write_message(self.proc.stdin.fileno(), request)
            resp = self._receive(timeout + HOST_GRACE)
        except OSError as exc:
            resp = None
            log.warning("unmask.sandbox: zygote channel failed: %s", exc)
        try:
            if resp is None:  # the zygote hung or died: kill it and its namespace, sweep the uid
                self.close()
                return infra_error("sandbox zygote did not answer", time.monotonic() - start)
            if "infra" in resp:
                return infra_error(f"sandbox zygote error: {resp['infra']}", time.monotonic() - start)
            return classify(
                nonce=nonce,
                child_pid=resp["child_pid"],
                report=resp["report"],
                exit_code=resp["exit_code"],
                signal_number=resp["signal"],
                timed_out=resp["timed_out"],
                stdout=base64.b64decode(resp["stdout"]).decode("utf-8", "replace"),
                stderr=base64.b64decode(resp["stderr"]).decode("utf-8", "replace"),
                truncated=resp["stdout_truncated"] or resp["stderr_truncated"],
                duration=resp["duration"],
            )
        finally:
            if resp is None and os.geteuid() == 0:
                _zygote.sweep_uid(uid)
            UIDS.give(uid)

    def close(self) -> None:
        """Stop the zygote; in namespaced mode killing its process group ends the whole namespace."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self._host_tmp is not None:
            shutil.rmtree(self._host_tmp, ignore_errors=True)
            self._host_tmp = None

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
