"""Adversarial tests for unmask.sandbox: hostile programs, exact verdicts, and an unharmed host.

Each hostile program runs once per mode (bubblewrap namespaces, and the rlimits fallback forced even where
bubblewrap works) and per design (a fresh sandbox per program — the default `run` path — and the pooled
zygotes of `run_many`); the runs are shared by module-scoped fixtures so the file stays fast. The namespaces
mode skips, with the probe's reason, where the kernel or bwrap refuses; checks of what only namespaces give
(network, world-writable places, pids) skip in the fallback, saying so.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.sandbox import (
    ExecutionResult,
    Limits,
    _zygote,
    classify,
    exception_from_stderr,
    isolation,
    launcher,
    preflight,
    run,
    run_many,
)
from unmask.sandbox.launcher import UID_BASE, UID_SPAN, ZYGOTE_SCRIPT, Isolation

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox drops privileges and needs root")

TIMEOUT = 1.0
MEMORY_MB = 256
SECRET_ENV = "UNMASK_TEST_SECRET_TOKEN"
SECRET_VALUE = "s3cr3t-env-" + os.urandom(8).hex()
SECRET_FILE_TEXT = "s3cr3t-file-" + os.urandom(8).hex()
CANARY_TEXT = "canary-" + os.urandom(8).hex()
NEEDS_NS = "needs_ns"
MODES = ("namespaces", "rlimits")
ONLY_NS = "only namespaces give this isolation (the fallback shares the host's network, pids and world-writable places)"
STDLIB_PROGRAM = ("import glob, subprocess, threading\nbox = []\nt = threading.Thread(target=box.append, args=(1,))\n"
                  "t.start()\nt.join()\nassert box == [1]\nassert subprocess.run(['true']).returncode == 0\n"
                  "assert glob.glob('*') == []\n")


def _isolation_or_skip(mode: str) -> Isolation:
    """The isolation of ``mode``; skips, with the probe's reason, where this machine cannot give it."""
    try:
        return isolation(mode)
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=MODES)
def mode(request) -> str:
    _isolation_or_skip(request.param)
    return request.param


def _sandbox_processes(zygotes: bool = True) -> list[tuple[int, int, str]]:
    """(pid, uid, cmdline) of every host process running as a sandbox uid (or a zygote, if asked)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue  # exited while we looked
        if UID_BASE <= uid < UID_BASE + UID_SPAN or (zygotes and str(ZYGOTE_SCRIPT) in cmd):
            found.append((int(name), uid, cmd))
    return found


@pytest.fixture(scope="module")
def host():
    """Canaries and secrets on the host, in a directory the sandbox can see (read-only) — not /tmp,
    which the namespaced sandbox replaces — plus a loopback listener and a secret env var."""
    root = Path(tempfile.mkdtemp(prefix="unmask-sbx-test-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    private = root / "private"  # root-owned 0755 dir, 0644 file: protected by the uid drop
    private.mkdir(mode=0o755)
    (private / "canary.txt").write_text(CANARY_TEXT)
    os.chmod(private / "canary.txt", 0o644)
    shared = root / "shared"  # world-writable dir and file: protected only by the read-only mount
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "canary.txt").write_text(CANARY_TEXT)
    os.chmod(shared / "canary.txt", 0o666)
    secret = root / "secret.txt"
    secret.write_text(SECRET_FILE_TEXT)
    os.chmod(secret, 0o600)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET_VALUE
    yield {"root": root, "private": private, "shared": shared, "secret": secret, "listener": listener,
           "port": listener.getsockname()[1]}
    if old is None:
        del os.environ[SECRET_ENV]
    else:
        os.environ[SECRET_ENV] = old
    listener.close()
    for p in (shared / "canary.txt", shared):
        os.chmod(p, 0o755)
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def hostile_programs(h: dict, namespaces: bool) -> list[tuple[str, str, str, str, str | None]]:
    """(id, program, expected status, expected error_kind, requirement) — requirement NEEDS_NS or None."""
    pc, sc, secret, port = h["private"] / "canary.txt", h["shared"] / "canary.txt", h["secret"], h["port"]
    # the read-only mount answers before the permission check (EROFS → OSError); without it, EACCES
    denied = "OSError" if namespaces else "PermissionError"
    return [
        ("pass_two_asserts", "def f(x):\n    return x * 2\nassert f(2) == 4\nassert f(0) == 0\n",
         "passed", "", None),
        ("fail_assert", "assert 1 + 1 == 3\n", "failed", "AssertionError", None),
        ("name_error", "print(undefined)\n", "failed", "NameError", None),
        ("syntax_error", "def f(:\n", "failed", "SyntaxError", None),
        ("python_infinite_loop", "while True:\n    pass\n", "timeout", "timeout", None),
        ("regex_catastrophe", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n", "timeout", "timeout", None),
        ("ctypes_blocking_call", "import ctypes\nctypes.CDLL(None).pause()\n", "timeout", "timeout", None),
        ("sleep", "import time\ntime.sleep(60)\n", "timeout", "timeout", None),
        ("ignores_sigterm",
         "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
         "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n", "timeout", "timeout", None),
        ("nondaemon_thread_forever",
         "import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()\n",
         "timeout", "timeout", None),
        ("memory_bomb_at_once", "x = bytearray(4 * 1024 ** 3)\n", "failed", "memory", None),
        ("memory_bomb_gradual", "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",
         "failed", "memory", None),
        ("fork_bomb", "import os\nwhile True:\n    os.fork()\n", "failed", "BlockingIOError", None),
        ("subprocess_flood",
         "import subprocess\nprocs = [subprocess.Popen(['sleep', '60']) for _ in range(500)]\n",
         "failed", "BlockingIOError", None),
        ("double_fork_daemon",
         "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        time.sleep(60)\n    os._exit(0)\nos.wait()\nassert True\n", "passed", "", None),
        ("kill_parent", "import os\nos.kill(os.getppid(), 9)\n", "failed", "PermissionError", None),
        # kill(-1) reaches only the run's own uid (never the zygote, the host or other runs) and spares
        # the caller, so the program survives
        ("kill_everything", "import os\nos.kill(-1, 9)\nassert True\n", "passed", "", None),
        ("kill_itself", "import os\nos.kill(os.getpid(), 9)\n", "failed", "signal:SIGKILL", None),
        ("segfault", "import ctypes\nctypes.string_at(0)\n", "failed", "signal:SIGSEGV", None),
        ("runs_unprivileged",
         "import os\nassert os.getuid() != 0 and os.geteuid() != 0 and os.getgid() != 0\n"
         "assert os.getgroups() in ([], [os.getgid()])\n", "passed", "", None),
        ("rlimits_applied",
         f"import resource\nassert resource.getrlimit(resource.RLIMIT_AS)[0] == {MEMORY_MB} * 2 ** 20\n"
         f"assert resource.getrlimit(resource.RLIMIT_NPROC)[0] == {Limits().max_processes}\n",
         "passed", "", None),
        ("file_size_bomb", "with open('big', 'wb') as f:\n    f.write(b'x' * (64 * 2 ** 20))\n",
         "failed", "OSError", None),
        ("private_tmp_writable",
         "import os, tempfile\nopen('a.txt', 'w').write('hi')\nassert open('a.txt').read() == 'hi'\n"
         "assert tempfile.gettempdir() == os.getcwd()\n", "passed", "", None),
        ("write_outside_uid_protected", f"open({str(pc)!r}, 'w').write('pwned')\n", "failed", denied, None),
        ("delete_outside_uid_protected", f"import os\nos.remove({str(pc)!r})\n", "failed", denied, None),
        ("write_outside_world_writable",
         f"hits = []\nfor p in ({str(sc)!r}, {str(h['shared'] / 'new.txt')!r}):\n    try:\n"
         "        open(p, 'a').write('pwned')\n        hits.append(p)\n    except OSError:\n        pass\n"
         f"import os\ntry:\n    os.remove({str(sc)!r})\n    hits.append('removed')\n"
         "except OSError:\n    pass\n"
         "assert not hits, hits\n", "passed", "", NEEDS_NS),
        ("network_loopback_blocked",
         "import socket\ntry:\n"
         f"    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n    connected = True\n"
         "except OSError:\n    connected = False\nassert not connected\n", "passed", "", NEEDS_NS),
        ("private_pid_namespace",
         "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\nassert len(pids) < 10, pids\n",
         "passed", "", NEEDS_NS),
        ("reads_environment",
         "import os, glob\nprint(dict(os.environ))\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
         "        print(open(p, 'rb').read())\n    except OSError:\n        pass\n", "passed", "", None),
        ("reads_secret_file", f"print(open({str(secret)!r}).read())\n", "failed", "PermissionError", None),
        ("output_flood_forever", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
         "timeout", "timeout", None),
        ("output_flood_finite", "print('y' * 10_000_000)\n", "passed", "", None),
        ("binary_output",
         "import sys\nsys.stdout.buffer.write(b'ok\\xff\\xfe\\x00end')\n"
         "sys.stderr.buffer.write(bytes(range(256)))\n",
         "passed", "", None),
        ("sys_exit_0", "import sys\nsys.exit(0)\nassert False\n", "failed", "early_exit", None),
        ("sys_exit_none", "import sys\nsys.exit()\n", "failed", "early_exit", None),
        ("builtin_exit", "exit()\n", "failed", "early_exit", None),
        ("raise_systemexit", "raise SystemExit\n", "failed", "early_exit", None),
        ("os_exit_0", "import os\nos._exit(0)\n", "failed", "early_exit", None),
        ("fake_marker_stdout", "print('ok')\nprint('PASSED')\nimport os\nos._exit(0)\n",
         "failed", "early_exit", None),
        ("fake_marker_fd3", "import os\nos.write(3, b'0123456789abcdef ok\\n')\nos._exit(0)\n",
         "failed", "early_exit", None),
        ("forked_child_marker",
         "import os\nif os.fork() != 0:\n    os._exit(0)\nassert True\n", "failed", "early_exit", None),
        ("sys_exit_nonzero", "import sys\nsys.exit(3)\n", "failed", "SystemExit", None),
        ("stdin_input", "input()\n", "failed", "EOFError", None),
        ("stdin_read", "import sys\nassert sys.stdin.read() == ''\n", "passed", "", None),
        # modules the zygote does not preload: the fallback's uid must reach the interpreter to import them
        ("stdlib_imports", STDLIB_PROGRAM, "passed", "", None),
        # ... but reaching it must not make it writable
        ("interpreter_not_writable",
         "import os, sys\nhits = []\nfor d in sys.path[1:]:\n    try:\n"
         "        open(os.path.join(d, 'pwned.py'), 'w').close()\n        hits.append(d)\n"
         "    except OSError:\n        pass\nassert not hits, hits\n", "passed", "", None),
    ]


@pytest.fixture(scope="module", params=[(m, d) for m in MODES for d in ("fresh", "pooled")],
                ids=lambda p: "-".join(p))
def design_runs(request, host):
    """Run every hostile program once in this mode and design; check the host right after. What only
    namespaces isolate is not run in the fallback: it would reach the host (and its verdict test skips)."""
    mode, design = request.param
    namespaces = _isolation_or_skip(mode).namespaces
    cases = [c for c in hostile_programs(host, namespaces) if c[4] != NEEDS_NS or namespaces]
    programs = [c[1] for c in cases]
    results = run_many(programs, timeout=TIMEOUT, memory_mb=MEMORY_MB, fresh=design == "fresh", mode=mode)
    leftovers = _sandbox_processes()
    accepted = []
    while True:
        try:
            accepted.append(host["listener"].accept())
        except BlockingIOError:
            break
    return {"design": request.param, "cases": {c[0]: (c, r) for c, r in zip(cases, results)},
            "leftovers": leftovers, "accepted": accepted}


CASE_IDS = [c[0] for c in hostile_programs({"private": Path("/x"), "shared": Path("/x"),
                                            "secret": Path("/x"), "port": 1}, namespaces=True)]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_program_verdict(design_runs, case_id):
    if case_id not in design_runs["cases"]:
        pytest.skip(ONLY_NS)
    (name, program, status, kind, needs), result = design_runs["cases"][case_id]
    assert (result.status, result.error_kind) == (status, kind), (design_runs["design"], result)
    assert result.status != "infra_error"


def test_host_unharmed(design_runs, host):
    assert design_runs["leftovers"] == [], "processes outlived their run"
    assert design_runs["accepted"] == [], "a sandboxed program reached the loopback listener"
    for d in ("private", "shared"):
        assert (host[d] / "canary.txt").read_text() == CANARY_TEXT
    assert sorted(p.name for p in host["shared"].iterdir()) == ["canary.txt"]
    assert host["secret"].read_text() == SECRET_FILE_TEXT


def test_secrets_not_visible(design_runs):
    for _, result in design_runs["cases"].values():
        assert SECRET_VALUE not in result.stdout + result.stderr
        assert SECRET_FILE_TEXT not in result.stdout + result.stderr
    env_result = design_runs["cases"]["reads_environment"][1]
    assert "PATH" in env_result.stdout and SECRET_ENV not in env_result.stdout


def test_output_capped_and_decoded(design_runs):
    cap = Limits().output_limit
    flood = design_runs["cases"]["output_flood_finite"][1]
    assert flood.truncated and flood.stdout == "y" * cap
    forever = design_runs["cases"]["output_flood_forever"][1]
    assert forever.truncated and len(forever.stdout) == cap
    binary = design_runs["cases"]["binary_output"][1]
    assert binary.stdout == "ok\ufffd\ufffd\x00end" and not binary.truncated
    assert "\ufffd" in binary.stderr
    assert design_runs["cases"]["sys_exit_nonzero"][1].exit_code == 3


def test_timeouts_are_enforced_promptly(design_runs):
    for (name, _, status, _, _), result in design_runs["cases"].values():
        if status == "timeout":
            assert TIMEOUT <= result.duration < TIMEOUT + 1.0, (name, result.duration)


def test_no_state_leaks_between_programs(mode):
    """One zygote, sequential programs: the second must not see the first's modules, files or globals."""
    first = ("import json, sys, os\njson.LEAK = 1\nsys.modules['leaky_module'] = json\nLEAK_GLOBAL = 1\n"
             "open('left_behind.txt', 'w').write('x')\nos.environ['LEAK'] = '1'\n")
    second = ("import json, sys, os\nassert not hasattr(json, 'LEAK')\n"
              "assert 'leaky_module' not in sys.modules\n"
              "assert 'LEAK_GLOBAL' not in globals()\nassert os.listdir('.') == []\n"
              "assert 'LEAK' not in os.environ\n")
    results = run_many([first, second, second], timeout=5.0, memory_mb=MEMORY_MB, workers=1, mode=mode)
    assert [r.status for r in results] == ["passed"] * 3, results
    if mode == "namespaces":  # the run directories of earlier programs are gone
        from unmask.sandbox.launcher import _python_dirs

        # a checkout or venv under /tmp is re-exposed read-only inside the sandbox: not a leftover
        exposed = sorted({Path(d).relative_to("/tmp").parts[0] for d in _python_dirs() if d.startswith("/tmp/")})
        program = f"import os\nassert len(set(os.listdir('/tmp')) - set({exposed!r})) == 1\n"
        assert run(program, timeout=5.0, mode=mode).passed


def test_leftovers_killed_while_zygote_lives(mode):
    """The per-run sweep, not the end of the namespace, kills daemons and fork-bomb children."""
    from unmask.sandbox import Zygote

    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        time.sleep(60)\n    os._exit(0)\nos.wait()\n")
    spawner = "import subprocess\nfor _ in range(5):\n    subprocess.Popen(['sleep', '60'])\n"
    with Zygote(iso=isolation(mode)) as z:
        assert z.execute(daemon, timeout=5.0, memory_mb=MEMORY_MB).passed
        assert _sandbox_processes(zygotes=False) == []
        assert z.execute(spawner, timeout=5.0, memory_mb=MEMORY_MB).passed
        assert _sandbox_processes(zygotes=False) == []
        assert z.alive


def test_pool_survives_hostile_neighbours(mode):
    programs = ["import os\nos.kill(-1, 9)\nos.kill(os.getpid(), 9)\n", "assert 2 + 2 == 4\n",
                "import os\nos._exit(0)\n",
                "while True:\n    pass\n", "assert 3 * 3 == 9\n"] * 2
    results = run_many(programs, timeout=TIMEOUT, memory_mb=MEMORY_MB, workers=2, mode=mode)
    expected = ["failed", "passed", "failed", "timeout", "passed"] * 2
    assert [r.status for r in results] == expected
    assert _sandbox_processes() == []


def test_run_validates_arguments():
    with pytest.raises(TypeError, match="program must be a str"):
        run(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        run("pass", timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        run("pass", timeout=float("nan"))
    with pytest.raises(ValueError, match="memory_mb"):
        run("pass", memory_mb=1)
    with pytest.raises(TypeError, match="programs must be a sequence"):
        run_many("pass")
    with pytest.raises(TypeError, match=r"programs\[1\]"):
        run_many(["pass", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=0)
    with pytest.raises(ValueError, match="max_processes"):
        Limits(max_processes=0)
    with pytest.raises(ValueError, match="status"):
        ExecutionResult("ok", 0, "", "", False, 0.0, "")
    with pytest.raises(ValueError, match="error_kind"):
        ExecutionResult("failed", 1, "", "", False, 0.0, "")


def test_run_many_empty_and_order():
    assert run_many([]) == []
    programs = [f"assert {i} % 3 != 0\n" for i in range(12)]
    results = run_many(programs, timeout=5.0, memory_mb=MEMORY_MB)
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)]


# ---------------------------------------------------------------------------- classify (pure function)
NONCE = "ab" * 16


def _classify(report: str, exit_code: int | None, sig: int | None = None, timed_out: bool = False,
              stderr: str = "") -> ExecutionResult:
    return classify(nonce=NONCE, child_pid=7, report=report, exit_code=exit_code, signal_number=sig,
                    timed_out=timed_out, stdout="", stderr=stderr, truncated=False, duration=0.1)


def test_classify_table():
    ok = f"{NONCE} 7 ok\n"
    assert _classify(ok, 0).status == "passed"
    assert _classify(ok, 1).error_kind == "exit_code"  # marker, then failed on the way out
    assert _classify(f"{NONCE} 8 ok\n", 0).error_kind == "early_exit"  # a forked process's marker
    assert _classify(f"{'cd' * 16} 7 ok\n", 0).error_kind == "early_exit"  # wrong nonce
    assert _classify("ok\n", 0).error_kind == "early_exit"
    assert _classify(ok, 0, timed_out=True).status == "timeout"
    assert _classify("", None, sig=signal.SIGXCPU).error_kind == "timeout"
    assert _classify(f"{NONCE} 7 exc MemoryError\n", 1).error_kind == "memory"
    assert _classify(f"{NONCE} 7 infra OSError: x\n", 125).status == "infra_error"
    assert _classify("", None, sig=signal.SIGSEGV).error_kind == "signal:SIGSEGV"
    tb = "Traceback (most recent call last):\n  File \"program.py\", line 1\nValueError: bad\n"
    assert _classify("", 1, stderr=tb).error_kind == "ValueError"  # no report: fall back to stderr


def test_exception_from_stderr():
    assert exception_from_stderr("Traceback (most recent call last):\n  x\npkg.mod.CustomError: m\n") == \
        "CustomError"
    assert exception_from_stderr("Traceback (most recent call last):\n  x\nKeyError\n\n") == "KeyError"
    assert exception_from_stderr("AssertionError: printed, not raised\n") is None
    assert exception_from_stderr("") is None


@given(st.text(max_size=200))
def test_forged_report_never_passes(text):
    """Whatever a program writes without the nonce cannot make it pass."""
    result = _classify(text.replace(NONCE, ""), 0)
    assert result.status == "failed" and result.error_kind == "early_exit"


def test_fallback_logs_a_warning(monkeypatch, caplog):
    launcher.probe.cache_clear()
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    monkeypatch.delenv(launcher.ENV_MODE, raising=False)
    try:
        with caplog.at_level("WARNING", logger="unmask.sandbox"):
            iso = launcher.isolation()
        assert iso.mode == "rlimits" and "bwrap not found" in iso.reason
        assert any("falling back" in r.getMessage() for r in caplog.records)
    finally:
        launcher.probe.cache_clear()


def test_rlimits_fallback_still_isolates_basics():
    """The fallback path (no namespaces) still drops privileges, limits and sweeps."""
    from unmask.sandbox.launcher import Isolation, Zygote

    with Zygote(iso=Isolation("rlimits", "forced by test")) as z:
        assert z.execute("import os\nassert os.getuid() != 0\n", timeout=5.0, memory_mb=MEMORY_MB).passed
        r = z.execute("import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(60)\n",
                      timeout=5.0, memory_mb=MEMORY_MB)
        assert r.status == "passed"
        assert z.execute("import os\nos._exit(0)\n", timeout=5.0, memory_mb=MEMORY_MB).error_kind == \
            "early_exit"
        assert z.execute("while True:\n    pass\n", timeout=0.5, memory_mb=MEMORY_MB).status == "timeout"
    assert _sandbox_processes() == []
    leftover = [p for p in Path(tempfile.gettempdir()).glob("unmask-sandbox-*")
                if stat.S_IMODE(p.stat().st_mode) == 0o711]
    assert leftover == []


# -------------------------------------------------------------------------- the fallback's interpreter
def test_fallback_imports_the_standard_library():
    """The fallback's uid owns nothing, so an interpreter below a 0700 directory (pyenv in /root) was out of its
    reach and every import the zygote had not preloaded failed: a sandbox fault scored as the program's."""
    result = run(STDLIB_PROGRAM, timeout=10.0, memory_mb=MEMORY_MB, mode="rlimits")
    assert (result.status, result.error_kind) == ("passed", ""), result


@pytest.mark.parametrize("sandbox_mode", ["auto", "rlimits"])
def test_installed_packages_import(sandbox_mode):
    pytest.importorskip("numpy")
    program = "import numpy as np\nassert int(np.arange(4).sum()) == 6\n"
    result = run(program, timeout=20.0, memory_mb=1024, mode=sandbox_mode)
    assert (result.status, result.error_kind) == ("passed", ""), result


def _fake_modes(modes: dict[str, int]):
    def mode_of(path: str) -> int:
        if path not in modes:
            raise FileNotFoundError(path)
        return modes[path]

    return mode_of


def test_unreachable_dirs_finds_what_others_cannot_search():
    d = stat.S_IFDIR
    mode_of = _fake_modes({"/": d | 0o755, "/sbx-home": d | 0o700, "/sbx-home/py": d | 0o755,
                           "/sbx-home/py/lib": d | 0o755, "/sbx-home/py/lib/dyn": d | 0o755,
                           "/sbx-usr": d | 0o755, "/sbx-usr/lib": d | 0o755, "/sbx-usr/lib/f.zip": stat.S_IFREG | 0o644,
                           "/sbx-usr/closed": d | 0o750, "/sbx-usr/closed/lib": d | 0o755})
    paths = ["/sbx-home/py/lib", "/sbx-home/py/lib/dyn", "/sbx-usr/lib", "/sbx-usr/lib/f.zip",
             "/sbx-usr/closed/lib", "/sbx-home/py/missing.zip", "", "relative/lib"]
    assert _zygote.unreachable_dirs(paths, mode_of) == ["/sbx-home/py/lib", "/sbx-home/py/lib/dyn",
                                                         "/sbx-usr/closed/lib"]
    # the directory itself may deny others: anchoring cannot help there (the preflight reports it)
    assert not _zygote.unreachable("/sbx-home", mode_of)


def test_rewrite_uses_the_longest_anchor():
    anchors = {"/p/lib": "/proc/self/fd/4", "/p/lib/dyn": "/proc/self/fd/5"}
    assert _zygote.rewrite("/p/lib", anchors) == "/proc/self/fd/4"
    assert _zygote.rewrite("/p/lib/json", anchors) == "/proc/self/fd/4/json"
    assert _zygote.rewrite("/p/lib/dyn/_x.so", anchors) == "/proc/self/fd/5/_x.so"
    assert _zygote.rewrite("/p/library", anchors) == "/p/library"
    assert _zygote.rewrite("/q/lib", anchors) == "/q/lib"


# ----------------------------------------------------------------------------------------------- preflight
@pytest.fixture
def fresh_preflight():
    preflight.forget()
    yield
    preflight.forget()


def _scripted(*statuses: str):
    """An ``execute`` that answers the given statuses in turn and counts its calls."""
    calls = []

    def execute(program, *, timeout, memory_mb):
        calls.append(program)
        status = statuses[len(calls) - 1]
        kind = {"passed": "", "failed": "ModuleNotFoundError", "timeout": "timeout"}[status]
        stderr = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'threading'\n"
        return ExecutionResult(status, 1, "", "" if status == "passed" else stderr, False, 0.1, kind)

    return execute, calls


def test_preflight_pass_is_checked_once(fresh_preflight):
    execute, calls = _scripted("passed")
    iso = Isolation("rlimits", "test")
    assert preflight.problem(iso, execute) is None
    assert preflight.problem(iso, execute) is None
    assert calls == [preflight.PROGRAM]


def test_preflight_failure_names_cause_and_fix_and_is_remembered(fresh_preflight):
    execute, calls = _scripted("failed")
    iso = Isolation("rlimits", "bwrap not found")
    message = preflight.problem(iso, execute)
    assert "No module named 'threading'" in message and "rlimits" in message
    assert "Fix: install bubblewrap" in message
    assert preflight.problem(iso, execute) == message and len(calls) == 1


def test_preflight_timeout_is_not_remembered(fresh_preflight):
    execute, calls = _scripted("timeout", "passed")
    iso = Isolation("namespaces", "test")
    assert "timeout" in preflight.problem(iso, execute)
    assert preflight.problem(iso, execute) is None and len(calls) == 2


def test_failed_preflight_makes_every_run_an_infra_error(mode, fresh_preflight, monkeypatch):
    """A sandbox that cannot give a correct verdict must say so for every program, never score it."""
    monkeypatch.setattr(preflight, "PROGRAM", "import no_such_module_for_the_preflight\n")
    results = run_many(["assert True\n", "assert False\n"], timeout=5.0, memory_mb=MEMORY_MB, mode=mode)
    results.append(run("assert True\n", timeout=5.0, memory_mb=MEMORY_MB, mode=mode))
    assert [r.status for r in results] == ["infra_error"] * 3
    for r in results:
        assert "preflight" in r.stderr and "no_such_module_for_the_preflight" in r.stderr and "Fix:" in r.stderr


# ------------------------------------------------------------------------------------------- mode switch
def test_mode_switch(monkeypatch):
    monkeypatch.setenv(launcher.ENV_MODE, "rlimits")
    assert isolation() == Isolation("rlimits", f"forced by {launcher.ENV_MODE}")
    assert isolation("auto") == launcher.probe()  # the argument wins over the environment
    monkeypatch.setenv(launcher.ENV_MODE, "chroot")
    with pytest.raises(ValueError, match="chroot"):
        isolation()
    with pytest.raises(ValueError, match="sandbox mode"):
        run("pass")


def test_required_namespaces_never_fall_back(monkeypatch):
    monkeypatch.setattr(launcher, "probe", lambda: Isolation("rlimits", "no bwrap here (test)"))
    with pytest.raises(RuntimeError, match="no bwrap here"):
        isolation("namespaces")
    single = run("assert True\n", mode="namespaces")
    assert single.status == "infra_error" and "no bwrap here" in single.stderr
    assert [r.status for r in run_many(["pass", "pass"], mode="namespaces")] == ["infra_error"] * 2
