"""Terminal renderings of a decode with rich: text coloured by commit step, and the live canvas.

``render_decode_order`` shows a finished generation with every token coloured along a gradient from
the first step (blue) to the last (red), so out-of-order decoding is visible at a glance in a terminal.
``render_canvas`` draws the canvas mid-decode — committed tokens as text, masked positions as a dim
placeholder — and is what the CLI's live view refreshes after each step. Both return
``rich.text.Text`` (no printing here), so callers choose the console and tests can read the styles.
Token texts are appended literally: rich markup such as ``[bold]`` inside code is not interpreted.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.text import Text

# gradient stops, early -> late: blue, green, amber, red (all readable on dark and light backgrounds)
GRADIENT_STOPS: tuple[tuple[int, int, int], ...] = (
    (0x3B, 0x82, 0xF6),
    (0x10, 0xB9, 0x81),
    (0xF5, 0x9E, 0x0B),
    (0xEF, 0x44, 0x44),
)
MASK_PLACEHOLDER = "░"
MASK_STYLE = Style(dim=True)
REVISED_STYLE = Style(bold=True, underline=True)  # a token a revising decoder just replaced
UNCOMMITTED_STYLE = Style(dim=True, italic=True)


def step_color(step: int, last_step: int) -> str:
    """Hex colour ``#rrggbb`` of a commit at ``step`` on the early-to-late gradient ending at ``last_step``.

    Piecewise-linear between :data:`GRADIENT_STOPS`; step 0 is the first stop, ``last_step`` the last.
    With ``last_step == 0`` (a one-step decode) everything gets the first stop.
    """
    for name, value in (("step", step), ("last_step", last_step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if step > last_step:
        raise ValueError(f"step {step} is after last_step {last_step}")
    fraction = 0.0 if last_step == 0 else step / last_step
    segments = len(GRADIENT_STOPS) - 1
    index = min(int(fraction * segments), segments - 1)  # which pair of stops
    local = fraction * segments - index  # position between them, 0..1
    lo, hi = GRADIENT_STOPS[index], GRADIENT_STOPS[index + 1]
    rgb = [round(a + (b - a) * local) for a, b in zip(lo, hi)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _check_tokens(token_texts: Sequence[str], other: Sequence[object], other_name: str) -> None:
    if isinstance(token_texts, str):
        raise TypeError("token_texts must be a sequence of strings, not one string")
    if len(token_texts) != len(other):
        raise ValueError(
            f"token_texts has {len(token_texts)} tokens but {other_name} has {len(other)} entries"
        )
    for i, text in enumerate(token_texts):
        if not isinstance(text, str):
            raise TypeError(f"token_texts[{i}] must be a str, got {type(text).__name__}")


def render_decode_order(
    token_texts: Sequence[str],
    commit_steps: Sequence[int | None],
    last_step: int | None = None,
) -> Text:
    """A generation with each token coloured by the step that committed it (early blue -> late red).

    ``commit_steps[i]`` is the step index of token ``i`` (see
    :func:`unmask.analysis.arness.commit_steps`) or ``None`` for a token never committed (dim italic).
    ``last_step`` fixes the end of the gradient (e.g. the sampler's step count, so several decodes
    share one scale); it defaults to the largest step present.
    """
    _check_tokens(token_texts, commit_steps, "commit_steps")
    steps: list[int | None] = []
    for i, s in enumerate(commit_steps):
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ValueError(f"commit_steps[{i}] must be a step index >= 0 or None, got {s!r}")
        steps.append(s)
    present = [s for s in steps if s is not None]
    end = max(present, default=0) if last_step is None else last_step
    if present and max(present) > end:
        raise ValueError(f"commit step {max(present)} is after last_step {end}")
    text = Text()
    for token, step in zip(token_texts, steps):
        style = UNCOMMITTED_STYLE if step is None else Style(color=step_color(step, end))
        text.append(token, style=style)
    return text


def render_canvas(
    token_texts: Sequence[str],
    masked: Sequence[bool],
    just_committed: Sequence[bool] | None = None,
    placeholder: str = MASK_PLACEHOLDER,
    revised: Sequence[bool] | None = None,
) -> Text:
    """The canvas mid-decode: committed tokens as text, each masked position as a dim ``placeholder``.

    The text of a masked entry is ignored (it is usually the mask token). ``just_committed`` marks
    the tokens committed in the latest step; they are drawn bold so the live view shows where the
    sampler is working. ``revised`` marks tokens the latest step took back (a revising decoder): a
    replaced or re-committed token is drawn bold and underlined, a re-masked one as the placeholder.
    """
    _check_tokens(token_texts, masked, "masked")
    for name, marks in (("just_committed", just_committed), ("revised", revised)):
        if marks is not None and len(marks) != len(token_texts):
            raise ValueError(f"token_texts has {len(token_texts)} tokens but {name} has {len(marks)} entries")
    if not isinstance(placeholder, str) or not placeholder:
        raise ValueError("placeholder must be a non-empty string")
    text = Text()
    for i, token in enumerate(token_texts):
        if bool(masked[i]):
            text.append(placeholder, style=MASK_STYLE)
        elif revised is not None and bool(revised[i]):
            text.append(token, style=REVISED_STYLE)
        elif just_committed is not None and bool(just_committed[i]):
            text.append(token, style=Style(bold=True))
        else:
            text.append(token)
    return text
