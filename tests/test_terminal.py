"""Tests for unmask.analysis.terminal: the styles given to tokens and masks."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.style import Style

from unmask.analysis.terminal import (
    GRADIENT_STOPS,
    MASK_PLACEHOLDER,
    render_canvas,
    render_decode_order,
    step_color,
)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _spans(text):
    """(substring, style) for each styled span, in order."""
    return [(text.plain[s.start : s.end], s.style) for s in text.spans]


def test_step_color_gradient_hand_values():
    assert step_color(0, 9) == _hex(GRADIENT_STOPS[0])
    assert step_color(9, 9) == _hex(GRADIENT_STOPS[-1])
    assert step_color(3, 9) == _hex(GRADIENT_STOPS[1])  # 3/9 = 1/3: exactly the second stop
    assert step_color(6, 9) == _hex(GRADIENT_STOPS[2])
    # step 1 of 6 is halfway between the first two stops (Python rounds .5 to even):
    # (0x3b+0x10)/2 = 37.5 -> 38 = 0x26; (0x82+0xb9)/2 = 157.5 -> 158 = 0x9e;
    # (0xf6+0x81)/2 = 187.5 -> 188 = 0xbc
    assert step_color(1, 6) == "#269ebc"
    assert step_color(0, 0) == _hex(GRADIENT_STOPS[0])
    with pytest.raises(ValueError, match="after last_step"):
        step_color(5, 4)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        step_color(-1, 4)


def test_render_decode_order_colours_early_and_late_differently():
    tokens = ["def", " f", "():", "\n    return", " 1", "<pad>"]
    steps = [0, 4, 1, 2, 3, None]
    text = render_decode_order(tokens, steps)
    assert text.plain == "".join(tokens)
    spans = _spans(text)
    assert [piece for piece, _ in spans] == tokens
    colours = [style.color.name if style.color else None for _, style in spans]
    assert colours[0] == step_color(0, 4) == _hex(GRADIENT_STOPS[0])  # earliest: blue
    assert colours[1] == step_color(4, 4) == _hex(GRADIENT_STOPS[-1])  # latest: red
    assert colours[0] != colours[1]
    assert len(set(colours[:5])) == 5  # five distinct steps, five distinct colours
    assert spans[5][1].dim and spans[5][1].italic and spans[5][1].color is None  # never committed
    # a shared scale: with last_step=8 the step-4 token sits mid-gradient, not at the red end
    shared = _spans(render_decode_order(tokens, steps, last_step=8))
    assert shared[1][1].color.name == step_color(4, 8) != colours[1]


def test_render_decode_order_reaches_the_terminal_as_truecolor():
    console = Console(color_system="truecolor", force_terminal=True, width=80, record=True)
    console.print(render_decode_order(["a", "b"], [0, 1]), end="")
    out = console.export_text(styles=True)
    r, g, b = GRADIENT_STOPS[0]
    assert f"38;2;{r};{g};{b}m" in out
    r, g, b = GRADIENT_STOPS[-1]
    assert f"38;2;{r};{g};{b}m" in out


def test_render_decode_order_is_literal_and_validates():
    text = render_decode_order(["[bold]x[/bold]"], [0])
    assert text.plain == "[bold]x[/bold]"  # markup is not interpreted
    with pytest.raises(ValueError, match="2 tokens but commit_steps has 1"):
        render_decode_order(["a", "b"], [0])
    with pytest.raises(ValueError, match=r"commit_steps\[1\]"):
        render_decode_order(["a", "b"], [0, -2])
    with pytest.raises(ValueError, match="after last_step 1"):
        render_decode_order(["a", "b"], [0, 3], last_step=1)
    with pytest.raises(TypeError, match="not one string"):
        render_decode_order("ab", [0, 1])


def test_render_canvas_masks_get_the_dim_placeholder():
    tokens = ["def", "<|mask|>", "(", "<|mask|>", ":"]
    masked = [False, True, False, True, False]
    text = render_canvas(tokens, masked, just_committed=[False, False, True, False, False])
    assert text.plain == f"def{MASK_PLACEHOLDER}({MASK_PLACEHOLDER}:"
    styled = _spans(text)
    assert styled == [
        (MASK_PLACEHOLDER, Style(dim=True)),
        ("(", Style(bold=True)),
        (MASK_PLACEHOLDER, Style(dim=True)),
    ]
    # committed, not-new tokens carry no style at all
    assert all(piece not in ("def", ":") for piece, _ in styled)
    # a fully committed canvas is just the text
    done = render_canvas(["a", "b"], [False, False])
    assert done.plain == "ab" and not done.spans
    custom = render_canvas(["x", "y"], [True, False], placeholder="_")
    assert custom.plain == "_y"
    with pytest.raises(ValueError, match="2 tokens but masked has 1"):
        render_canvas(["a", "b"], [True])
    with pytest.raises(ValueError, match="placeholder"):
        render_canvas(["a"], [True], placeholder="")
    # a token a revising decoder just replaced stands out from a plain new commit
    revised = render_canvas(["a", "b", "c"], [False, False, False], just_committed=[True, True, False],
                            revised=[False, True, False])
    assert _spans(revised) == [("a", Style(bold=True)), ("b", Style(bold=True, underline=True))]
    with pytest.raises(ValueError, match="revised has 1"):
        render_canvas(["a", "b"], [False, False], revised=[True])
