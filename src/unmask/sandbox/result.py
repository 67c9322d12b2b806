"""The verdict of one sandboxed run, and the pure function that derives it from what the zygote saw."""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass

STATUSES = ("passed", "failed", "timeout", "infra_error")

# The last traceback line looks like "pkg.module.SomeError: message" or just "SomeError".
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


@dataclass(frozen=True)
class ExecutionResult:
    """What happened when one program ran.

    status: "passed" (ran to the end of its code, exit 0), "failed", "timeout" or "infra_error" (the
    sandbox itself failed; not the program's fault). error_kind: "" when passed, else a short label for
    eval tables — an exception class name ("AssertionError", "SyntaxError", ...), "memory", "timeout",
    "early_exit" (exited with status 0 before the end), "exit_code" (non-zero exit, no exception),
    "signal:SIGSEGV"-style for deaths by signal, or "infra".
    stdout/stderr: the first ``output_limit`` bytes of each stream, decoded as UTF-8 with replacement;
    truncated is True when either stream was longer. duration: wall seconds from fork to exit.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    duration: float
    error_kind: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        d = self.duration
        if not (isinstance(d, (int, float)) and math.isfinite(d) and d >= 0):
            raise ValueError(f"duration must be a finite number >= 0, got {self.duration!r}")
        if (self.status == "passed") != (self.error_kind == ""):
            raise ValueError(f"error_kind must be empty exactly when passed, got {self.error_kind!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def infra_error(message: str, duration: float = 0.0) -> ExecutionResult:
    return ExecutionResult("infra_error", None, "", message, False, duration, "infra")


def exception_from_stderr(stderr: str) -> str | None:
    """The exception class name on the last non-empty line of a traceback, or None if it is not one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines or not any(line.startswith("Traceback (most recent call last):") for line in lines):
        return None
    match = _EXC_LINE.match(lines[-1])
    return match.group(1).rsplit(".", 1)[-1] if match else None


def _exception_kind(name: str) -> str:
    return "memory" if name == "MemoryError" else name


def classify(
    *,
    nonce: str,
    child_pid: int,
    report: str,
    exit_code: int | None,
    signal_number: int | None,
    timed_out: bool,
    stdout: str,
    stderr: str,
    truncated: bool,
    duration: float,
) -> ExecutionResult:
    """Turn the raw facts of a run into a verdict.

    Only report lines that start with the run's nonce and the pid of the process the zygote forked count:
    the nonce never appears in the program's output channels, so printing "ok" or a fake marker proves
    nothing, and a marker from a process the program forked does not count for the program.
    """
    prefix = f"{nonce} {child_pid} "
    lines = [line[len(prefix) :] for line in report.splitlines() if line.startswith(prefix)]

    def make(status: str, kind: str) -> ExecutionResult:
        return ExecutionResult(status, exit_code, stdout, stderr, truncated, duration, kind)

    for line in lines:
        if line.startswith("infra"):
            return ExecutionResult("infra_error", exit_code, stdout, stderr + "\n" + line, truncated,
                                   duration, "infra")
    if timed_out or signal_number == signal.SIGXCPU:
        return make("timeout", "timeout")
    if "ok" in lines and exit_code == 0:
        return make("passed", "")
    for line in lines:
        if line.startswith("exc "):
            return make("failed", _exception_kind(line[4:].strip() or "Exception"))
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return make("failed", f"signal:{name}")
    if exit_code == 0:
        return make("failed", "early_exit")
    parsed = exception_from_stderr(stderr)
    return make("failed", _exception_kind(parsed) if parsed else "exit_code")
