"""Tests for unmask.analysis.plots: valid PNGs, plotted data equal to the inputs, pure layout helpers."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from unmask.analysis.arness import commit_steps, summarize
from unmask.analysis.plots import decode_heatmap_matrix, layout_tokens

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def assert_valid_png(path, mpl, min_bytes: int = 5000) -> np.ndarray:
    """The file is a PNG of plausible size that decodes to a picture with more than one colour."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) >= min_bytes
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk follows the magic
    assert width >= 100 and height >= 100
    import matplotlib.image

    pixels = matplotlib.image.imread(path)  # (H, W, 4) floats
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.01
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp file left behind"
    return pixels


# ---------------------------------------------------------------------------------------------------
# AR-ness vs k
# ---------------------------------------------------------------------------------------------------


def _summaries():
    cold = summarize([[0, 1, 2, 3, 4, 5], [0, 1, 2, 4, 3, 5]])
    hot = summarize([[5, 4, 3, 2, 1, 0], [2, 0, 1, 3, 4, 5], [3, 4, 5, 0, 1, 2]])
    return cold, hot


def test_plot_arness_vs_k_draws_the_summaries(tmp_path, mpl):
    from unmask.analysis.plots import plot_arness_vs_k

    cold, hot = _summaries()
    path = tmp_path / "arness.png"
    # given hot first and with a string key (as after JSON): lines still come out sorted by temperature
    fig = plot_arness_vs_k({"1.2": hot, 0.2: cold}, path, title="demo")
    assert_valid_png(path, mpl)
    ax_local, ax_global = fig.axes
    assert "Local" in ax_local.get_title() and "Global" in ax_global.get_title()
    for ax, kind in ((ax_local, "local"), (ax_global, "global")):
        labels = [c.get_label() for c in ax.containers]
        assert labels == ["T=0.2", "T=1.2"]
        for container, summary in zip(ax.containers, (cold, hot)):
            line = container.lines[0]
            np.testing.assert_allclose(line.get_xdata(), summary[kind]["k"])
            np.testing.assert_allclose(line.get_ydata(), summary[kind]["mean"])
            # each error bar spans mean - std .. mean + std
            segments = container.lines[2][0].get_segments()
            heights = [seg[1][1] - seg[0][1] for seg in segments]
            np.testing.assert_allclose(heights, 2 * np.array(summary[kind]["std"]), atol=1e-12)
    assert len(ax_local.containers[0].lines[0].get_xdata()) == 9
    assert len(ax_global.containers[0].lines[0].get_xdata()) == 4
    # the two temperatures get different colours
    assert ax_local.containers[0].lines[0].get_color() != ax_local.containers[1].lines[0].get_color()


def test_plot_arness_vs_k_rejects_bad_input(tmp_path, mpl):
    from unmask.analysis.plots import plot_arness_vs_k

    cold, _ = _summaries()
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_arness_vs_k({}, path)
    with pytest.raises(ValueError, match="'global' entry"):
        plot_arness_vs_k({0.2: {"local": cold["local"]}}, path)
    broken = {"local": cold["local"], "global": {"k": [1, 2], "mean": [0.5], "std": [0.1]}}
    with pytest.raises(ValueError, match="equal length"):
        plot_arness_vs_k({0.2: broken}, path)
    with pytest.raises(TypeError, match="temperature 'hot'"):
        plot_arness_vs_k({"hot": cold}, path)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------------
# pass@k vs temperature
# ---------------------------------------------------------------------------------------------------


def test_plot_pass_vs_temperature_mapping_and_rows_agree(tmp_path, mpl):
    from unmask.analysis.plots import plot_pass_vs_temperature

    table = {
        1.2: {"pass@10": 0.74, "pass@1": 0.31, "pass@2": 0.45},
        0.2: {"pass@1": 0.52, "pass@10": 0.60, "pass@2": 0.55},
        1.0: {"pass@1": 0.40, "pass@10": 0.71},  # pass@2 missing here: skipped, not zero
    }
    fig = plot_pass_vs_temperature(table, tmp_path / "a.png")
    assert_valid_png(tmp_path / "a.png", mpl)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert [line.get_label() for line in ax.get_lines()] == ["pass@1", "pass@2", "pass@10"]  # by k
    np.testing.assert_allclose(lines["pass@1"].get_xdata(), [0.2, 1.0, 1.2])
    np.testing.assert_allclose(lines["pass@1"].get_ydata(), [0.52, 0.40, 0.31])
    np.testing.assert_allclose(lines["pass@10"].get_ydata(), [0.60, 0.71, 0.74])
    np.testing.assert_allclose(lines["pass@2"].get_xdata(), [0.2, 1.2])
    np.testing.assert_allclose(lines["pass@2"].get_ydata(), [0.55, 0.45])

    rows = [{"temperature": t, "n": 10, **metrics} for t, metrics in table.items()]
    fig2 = plot_pass_vs_temperature(rows, tmp_path / "b.png")
    for a, b in zip(ax.get_lines(), fig2.axes[0].get_lines()):
        assert a.get_label() == b.get_label()
        np.testing.assert_allclose(a.get_xydata(), b.get_xydata())
    with pytest.raises(ValueError, match="empty"):
        plot_pass_vs_temperature({}, tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"table\[0\].*'temperature'"):
        plot_pass_vs_temperature([{"pass@1": 0.5}], tmp_path / "c.png")
    with pytest.raises(TypeError, match="pass@1 at T=0.2"):
        plot_pass_vs_temperature({0.2: {"pass@1": "high"}}, tmp_path / "c.png")


def test_plot_speed_quality_one_line_per_model_sorted_by_speed(tmp_path, mpl):
    from unmask.analysis.plots import plot_speed_quality

    rows = [{"model": "hybrid", "label": "τ 0.9", "tokens_per_s": 700.0, "pass@1": 0.895, "low": 0.845, "high": 0.93},
            {"model": "full", "label": "blocks", "tokens_per_s": 96.5, "pass@1": 0.81},
            {"model": "hybrid", "label": "blocks", "tokens_per_s": 236.8, "pass@1": 0.92}]
    fig = plot_speed_quality(rows, tmp_path / "f.png")
    assert_valid_png(tmp_path / "f.png", mpl)
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label() in ("hybrid", "full")]
    assert [line.get_label() for line in lines] == ["hybrid", "full"]
    np.testing.assert_allclose(lines[0].get_xdata(), [236.8, 700.0])  # joined in order of speed
    np.testing.assert_allclose(lines[0].get_ydata(), [0.92, 0.895])
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="non-empty"):
        plot_speed_quality([], tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"rows\[0\].*'model'"):
        plot_speed_quality([{"tokens_per_s": 1.0, "pass@1": 0.5}], tmp_path / "g.png")
    with pytest.raises(ValueError, match="> 0"):
        plot_speed_quality([{"model": "a", "tokens_per_s": 0.0, "pass@1": 0.5}], tmp_path / "g.png")


# ---------------------------------------------------------------------------------------------------
# decode heat map
# ---------------------------------------------------------------------------------------------------


def test_decode_heatmap_matrix_hand_values():
    single = decode_heatmap_matrix([[0], [3, 1], [2]], 5)
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [0, 1, 0, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(single, expected)
    # two traces, the second one step longer: averaged, rows beyond a trace's end get nothing from it
    both = decode_heatmap_matrix([[[0], [3, 1], [2]], [[1], [0], [2], [3]]], 4)
    np.testing.assert_allclose(
        both,
        [
            [0.5, 0.5, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.5],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.5],
        ],
    )
    assert both.sum() == pytest.approx(4.0)  # each position committed once per trace, averaged


def test_decode_heatmap_matrix_rejects_bad_traces():
    with pytest.raises(ValueError, match="outside a region of length 3"):
        decode_heatmap_matrix([[0], [3]], 3)
    with pytest.raises(ValueError, match="trace 1: .*committed twice"):
        decode_heatmap_matrix([[[0], [1]], [[0], [0]]], 3)
    with pytest.raises(ValueError, match="length must be a positive int"):
        decode_heatmap_matrix([[0]], 0)
    with pytest.raises(ValueError, match="empty"):
        decode_heatmap_matrix([], 3)


def test_plot_decode_heatmap_shows_the_matrix(tmp_path, mpl):
    from unmask.analysis.plots import plot_decode_heatmap

    traces = [[[p] for p in range(32)], [[p] for p in reversed(range(32))]]
    fig = plot_decode_heatmap(traces, 32, tmp_path / "heat.png")
    assert_valid_png(tmp_path / "heat.png", mpl)
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), decode_heatmap_matrix(traces, 32))
    assert "2 decodes" in fig.axes[0].get_title()


# ---------------------------------------------------------------------------------------------------
# decode order as coloured text
# ---------------------------------------------------------------------------------------------------


def test_layout_tokens_hand_examples():
    assert layout_tokens(["def", " f", "():\n", "\treturn", " 1"]) == [
        (0, "def", 0, 0),
        (1, " f", 0, 3),
        (2, "():", 0, 5),
        (3, "    return", 1, 0),
        (4, " 1", 1, 10),
    ]
    assert layout_tokens(["aaaa", "bbbb", "cc"], max_columns=6) == [
        (0, "aaaa", 0, 0),
        (1, "bbbb", 1, 0),
        (2, "cc", 1, 4),
    ]
    assert layout_tokens(["abcdefgh"], max_columns=3) == [(0, "abc", 0, 0), (0, "def", 1, 0), (0, "gh", 2, 0)]
    assert layout_tokens(["a", "\n", "b", ""]) == [(0, "a", 0, 0), (2, "b", 1, 0)]
    with pytest.raises(TypeError, match=r"token_texts\[1\]"):
        layout_tokens(["a", 3])
    with pytest.raises(ValueError, match="max_columns"):
        layout_tokens(["a"], max_columns=0)


def test_plot_decode_order_colours_tokens_by_step(tmp_path, mpl):
    from matplotlib.colors import to_rgba

    from unmask.analysis.plots import plot_decode_order

    tokens = ["def", " add", "(a", ",", " b", "):\n", "    return", " a", " +", " b  # $x_1$", "<pad>"]
    steps = commit_steps([[0], [1], [2, 3], [4], [5], [6], [7], [8], [9]], length=11)
    assert steps == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8, None]  # the pad was never committed; last step 8
    fig = plot_decode_order(tokens, steps, tmp_path / "order.png", title="add")
    assert_valid_png(tmp_path / "order.png", mpl, min_bytes=3000)
    text_ax, bar_ax = fig.axes
    texts = text_ax.texts
    expected_pieces = [piece for _, piece, _, _ in layout_tokens(tokens)]
    assert [t.get_text() for t in texts] == expected_pieces  # '$' kept literally (no mathtext)
    viridis = mpl.colormaps["viridis"]
    placed = layout_tokens(tokens)
    for text, (index, _, _, _) in zip(texts, placed):
        step = steps[index]
        want = to_rgba("0.6") if step is None else viridis(step / 8)
        np.testing.assert_allclose(to_rgba(text.get_color()), want)
    assert to_rgba(texts[0].get_color()) != to_rgba(texts[9].get_color())  # first vs last step
    assert bar_ax.get_ylim() == pytest.approx((0, 8))  # the colorbar spans the steps
    with pytest.raises(ValueError, match="11 tokens but commit_step has 2"):
        plot_decode_order(tokens, [0, 1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"commit_step\[0\]"):
        plot_decode_order(["a"], [-1], tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------------
# the optional dependency and atomic writes
# ---------------------------------------------------------------------------------------------------


def test_missing_matplotlib_gives_an_install_hint(tmp_path, monkeypatch):
    from unmask.analysis.plots import plot_pass_vs_temperature

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install 'unmask\[plot\]'"):
        plot_pass_vs_temperature({0.2: {"pass@1": 0.5}}, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, mpl):
    from matplotlib.figure import Figure

    from unmask.analysis.plots import plot_pass_vs_temperature

    path = tmp_path / "p.png"
    path.write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_pass_vs_temperature({0.2: {"pass@1": 0.5}}, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_importing_the_package_does_not_import_matplotlib():
    import subprocess
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = "import sys, unmask.analysis, unmask.analysis.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(src)}, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
