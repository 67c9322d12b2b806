"""Turn a model's output into a runnable test program: code extraction and program assembly.

`extract_code` pulls Python out of a chat-style answer (fenced blocks, a missing closing fence, or the
instruct-evaluation prefill ``"Here is the code to solve this problem:\\n```python"`` followed by the
model's continuation). `build_program` assembles the text the sandbox runs for one (task, completion);
it never executes anything. Every program starts with `HARNESS_IMPORTS` (common stdlib imports, as the
EvalPlus harness provides).
"""

from __future__ import annotations

import ast
import re

from unmask.data.benchmarks import HARNESS_IMPORTS, Task

MODES = ("humaneval", "mbpp", "infilling", "instruct")
INSTRUCT_PREFILL = "Here is the code to solve this problem:\n```python"

_FENCE = re.compile(r"^[ \t]*```+[ \t]*([\w+#.-]*)[ \t]*$")
_PY_TAGS = {"", "python", "py", "python3", "py3"}


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def _looks_like_code(text: str) -> bool:
    """Parses as Python and has a statement prose never has (plain prose like "Sure" also parses)."""
    if not text.strip():
        return False
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign)
    return any(isinstance(node, kinds) for node in tree.body)


def extract_code(text: str, *, entry_point: str | None = None) -> str:
    """The code in a model answer.

    Fenced blocks (```python / ```py / bare ```) are collected; a block missing its closing fence runs to
    the end of the text. If the text *starts* with code and the first fence closes it (the model continued
    a prefilled "```python"), that leading code is a block too. Returns the first block that defines
    ``entry_point`` (if given), else the first Python block; with no fences at all, the whole text.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_code expects a str, got {type(text).__name__}")
    lines = text.splitlines(keepends=True)
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if not fences:
        return text
    blocks: list[tuple[str, str]] = []  # (language tag, code)
    leading = "".join(lines[: fences[0]])
    start = 0
    if _FENCE.match(lines[fences[0]]).group(1) == "" and _looks_like_code(leading):  # type: ignore[union-attr]
        blocks.append(("python", leading))
        start = 1  # the first fence closed the leading code
    k = start
    while k < len(fences):
        open_at = fences[k]
        tag = _FENCE.match(lines[open_at]).group(1).lower()  # type: ignore[union-attr]
        close_at = fences[k + 1] if k + 1 < len(fences) else len(lines)
        blocks.append((tag, "".join(lines[open_at + 1 : close_at])))
        k += 2
    python_blocks = [code for tag, code in blocks if tag in _PY_TAGS]
    if entry_point is not None:
        for code in python_blocks:
            if _defines(code, entry_point):
                return code
    if python_blocks:
        return python_blocks[0]
    return blocks[0][1] if blocks else text


def default_mode(task: Task) -> str:
    """How a plain completion for this task's benchmark is assembled."""
    if task.benchmark.startswith("humaneval-infilling"):
        return "infilling"
    if task.benchmark.startswith("mbpp"):
        return "mbpp"
    return "humaneval"


def _check_call(task: Task) -> str:
    # HumanEval-style tests only define check(); MBPP-style tests call the function themselves.
    return "" if task.benchmark.startswith("mbpp") else f"\ncheck({task.entry_point})\n"


def build_program(task: Task, completion: str, *, mode: str | None = None) -> str:
    """The program that passes iff ``completion`` solves ``task`` (it raises otherwise).

    - ``humaneval``: prompt + completion + test + ``check(entry_point)`` (completion = function body).
    - ``mbpp``: completion (full code defining the entry point) + test (asserts, self-executing).
    - ``infilling``: prefix (prompt) + completion (middle) + suffix + test + check.
    - ``instruct``: ``extract_code(completion)``, which must define the entry point, + test (+ check).
    ``mode=None`` picks by benchmark (`default_mode`).
    """
    if not isinstance(task, Task):
        raise TypeError(f"build_program expects a Task, got {type(task).__name__}")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    mode = default_mode(task) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode == "humaneval":
        code = task.prompt + completion
    elif mode == "mbpp":
        code = completion
    elif mode == "infilling":
        if "suffix" not in task.extra:
            raise ValueError(f"task {task.task_id!r} has no suffix; infilling mode needs an infilling task")
        code = task.prompt + completion + task.extra["suffix"]
    else:
        code = extract_code(completion, entry_point=task.entry_point)
        if not _defines(code, task.entry_point):
            # Still a valid program: it fails with a NameError, which is the honest outcome.
            code = code + f"\n# note: the extracted code does not define {task.entry_point}\n"
    return HARNESS_IMPORTS + "\n" + code + "\n\n" + task.test + _check_call(task)
