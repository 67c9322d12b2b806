"""Adversarial tests for unmask.sandbox: hostile programs, exact verdicts, and an unharmed host.

Each hostile program runs once per design (a fresh sandbox per program — the default `run` path — and the
pooled zygotes of `run_many`); the runs are shared by module-scoped fixtures so the file stays fast.
Tests that need namespaces skip, with the probe's reason, where the kernel or bwrap refuses.
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

from unmask.sandbox import ExecutionResult, Limits, classify, exception_from_stderr, isolation, run, run_many
from unmask.sandbox.launcher import UID_BASE, UID_SPAN, ZYGOTE_SCRIPT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox drops privileges and needs root")

TIMEOUT = 1.0
MEMORY_MB = 256
SECRET_ENV = "UNMASK_TEST_SECRET_TOKEN"
SECRET_VALUE = "s3cr3t-env-" + os.urandom(8).hex()
SECRET_FILE_TEXT = "s3cr3t-file-" + os.urandom(8).hex()
CANARY_TEXT = "canary-" + os.urandom(8).hex()
NEEDS_NS = "needs_ns"


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


def hostile_programs(h: dict) -> list[tuple[str, str, str, str, str | None]]:
    """(id, program, expected status, expected error_kind, requirement) — requirement NEEDS_NS or None."""
    pc, sc, secret, port = h["private"] / "canary.txt", h["shared"] / "canary.txt", h["secret"], h["port"]
    # the read-only mount answers before the permission check (EROFS → OSError); without it, EACCES
    denied = "OSError" if isolation().namespaces else "PermissionError"
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
    ]


@pytest.fixture(scope="module", params=["fresh", "pooled"])
def design_runs(request, host):
    """Run every hostile program once with this design; check the host right after."""
    cases = hostile_programs(host)
    programs = [c[1] for c in cases]
    results = run_many(programs, timeout=TIMEOUT, memory_mb=MEMORY_MB, fresh=request.param == "fresh")
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
                                            "secret": Path("/x"), "port": 1})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_program_verdict(design_runs, case_id):
    (name, program, status, kind, needs), result = design_runs["cases"][case_id]
    if needs == NEEDS_NS and not isolation().namespaces:
        pytest.skip(f"needs namespaces, unavailable here: {isolation().reason}")
    assert (result.status, result.error_kind) == (status, kind), (design_runs["design"], result)
    assert result.status != "infra_error"


def test_host_unharmed(design_runs, host):
    assert design_runs["leftovers"] == [], "processes outlived their run"
    assert design_runs["accepted"] == [], "a sandboxed program reached the loopback listener"
    for d in ("private", "shared"):
        assert (host[d] / "canary.txt").read_text() == CANARY_TEXT
    if isolation().namespaces:
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


def test_no_state_leaks_between_programs():
    """One zygote, sequential programs: the second must not see the first's modules, files or globals."""
    first = ("import json, sys, os\njson.LEAK = 1\nsys.modules['leaky_module'] = json\nLEAK_GLOBAL = 1\n"
             "open('left_behind.txt', 'w').write('x')\nos.environ['LEAK'] = '1'\n")
    second = ("import json, sys, os\nassert not hasattr(json, 'LEAK')\n"
              "assert 'leaky_module' not in sys.modules\n"
              "assert 'LEAK_GLOBAL' not in globals()\nassert os.listdir('.') == []\n"
              "assert 'LEAK' not in os.environ\n")
    results = run_many([first, second, second], timeout=5.0, memory_mb=MEMORY_MB, workers=1)
    assert [r.status for r in results] == ["passed"] * 3, results
    if isolation().namespaces:  # the run directories of earlier programs are gone
        from unmask.sandbox.launcher import _python_dirs

        # a checkout or venv under /tmp is re-exposed read-only inside the sandbox: not a leftover
        exposed = sorted({Path(d).relative_to("/tmp").parts[0] for d in _python_dirs() if d.startswith("/tmp/")})
        program = f"import os\nassert len(set(os.listdir('/tmp')) - set({exposed!r})) == 1\n"
        assert run(program, timeout=5.0).passed


def test_leftovers_killed_while_zygote_lives():
    """The per-run sweep, not the end of the namespace, kills daemons and fork-bomb children."""
    from unmask.sandbox import Zygote

    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        time.sleep(60)\n    os._exit(0)\nos.wait()\n")
    spawner = "import subprocess\nfor _ in range(5):\n    subprocess.Popen(['sleep', '60'])\n"
    with Zygote() as z:
        assert z.execute(daemon, timeout=5.0, memory_mb=MEMORY_MB).passed
        assert _sandbox_processes(zygotes=False) == []
        assert z.execute(spawner, timeout=5.0, memory_mb=MEMORY_MB).passed
        assert _sandbox_processes(zygotes=False) == []
        assert z.alive


def test_pool_survives_hostile_neighbours():
    programs = ["import os\nos.kill(-1, 9)\nos.kill(os.getpid(), 9)\n", "assert 2 + 2 == 4\n",
                "import os\nos._exit(0)\n",
                "while True:\n    pass\n", "assert 3 * 3 == 9\n"] * 2
    results = run_many(programs, timeout=TIMEOUT, memory_mb=MEMORY_MB, workers=2)
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
    from unmask.sandbox import launcher

    launcher.isolation.cache_clear()
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    try:
        with caplog.at_level("WARNING", logger="unmask.sandbox"):
            iso = launcher.isolation()
        assert iso.mode == "rlimits" and "bwrap not found" in iso.reason
        assert any("falling back" in r.getMessage() for r in caplog.records)
    finally:
        launcher.isolation.cache_clear()


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
