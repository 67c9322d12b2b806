"""Figures of decode-order analysis: AR-ness vs k, pass@k vs temperature, decode heat maps and orders.

matplotlib is an optional extra (``pip install 'unmask[plot]'``) and is imported only when a plot
function is called, so the rest of the package works without it. Figures are built on matplotlib's
Agg canvas directly (no pyplot, no global backend switch, nothing left open), written atomically as
PNG, and returned so callers and tests can read back exactly what was drawn.

The pure helpers (:func:`decode_heatmap_matrix`, :func:`layout_tokens`) need only numpy.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unmask.analysis.arness import flatten_order

if TYPE_CHECKING:  # only for annotations; the real import is lazy
    from matplotlib.figure import Figure

_MISSING_MATPLOTLIB = (
    "matplotlib is needed for unmask.analysis.plots but is not installed; "
    "install the plot extra with: pip install 'unmask[plot]'"
)

_REVISED_FRAME = {"boxstyle": "square,pad=0.1", "fill": False, "edgecolor": "red", "linewidth": 0.8}
_FONT_SIZE = 10.0  # points, for the token layout of plot_decode_order
_CHAR_WIDTH_IN = 0.6 * _FONT_SIZE / 72  # a DejaVu Sans Mono glyph is 0.6 em wide
_LINE_HEIGHT_IN = 1.5 * _FONT_SIZE / 72


def _require_matplotlib() -> Any:
    """Import matplotlib (and the submodules used here) or fail with an install hint."""
    try:
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.cm
        import matplotlib.colors
        import matplotlib.figure
        import matplotlib.ticker
    except ImportError as exc:
        raise ImportError(_MISSING_MATPLOTLIB) from exc
    return matplotlib


def _new_figure(mpl: Any, figsize: tuple[float, float]) -> Figure:
    fig = mpl.figure.Figure(figsize=figsize, dpi=100)
    mpl.backends.backend_agg.FigureCanvasAgg(fig)  # attaches the Agg canvas to fig
    return fig


def _save_png(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` as PNG atomically: a temp file in the same folder, then os.replace."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        umask = os.umask(0)  # mkstemp creates 0600; give the PNG the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish_lines(fig: Figure, ax: Any, path: str | os.PathLike[str], *, xlabel: str, ylabel: str, title: str
                  ) -> None:
    """Label, grid and legend a line plot, then write it to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_png(fig, path)


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{where}: expected a number, got a bool")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: expected a number, got {type(value).__name__} ({value!r})") from None
    if not math.isfinite(result):
        raise ValueError(f"{where}: expected a finite number, got {result}")
    return result


# ---------------------------------------------------------------------------------------------------
# AR-ness vs k, one line per temperature
# ---------------------------------------------------------------------------------------------------


def _series(summary: Any, kind: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, mean, std) arrays of one panel from a :func:`unmask.analysis.arness.summarize` result."""
    if not isinstance(summary, Mapping) or not isinstance(summary.get(kind), Mapping):
        raise ValueError(f"{where}: expected a summarize() result with a '{kind}' entry")
    part = summary[kind]
    missing = [key for key in ("k", "mean", "std") if key not in part]
    if missing:
        raise ValueError(f"{where}['{kind}'] lacks {missing}")
    ks = [_as_float(v, f"{where}['{kind}']['k']") for v in part["k"]]
    mean = [_as_float(v, f"{where}['{kind}']['mean']") for v in part["mean"]]
    std = [_as_float(v, f"{where}['{kind}']['std']") for v in part["std"]]
    if not (len(ks) == len(mean) == len(std)) or not ks:
        raise ValueError(f"{where}['{kind}']: k, mean and std must be non-empty and of equal length")
    return np.array(ks), np.array(mean), np.array(std)


def plot_arness_vs_k(
    results_by_temperature: Mapping[float, Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Figure:
    """Two panels — local AR-ness@k and global AR-ness@k — one line per temperature with ±std bars.

    ``results_by_temperature`` maps a sampling temperature to a :func:`summarize` result (``{"local":
    {"k", "mean", "std"}, "global": {...}}``); keys may be numbers or numeric strings (as after a JSON
    round trip). Lines are drawn in increasing temperature, coloured dark to warm. Returns the Figure;
    each line is an ``ErrorbarContainer`` in ``ax.containers`` labelled ``T=<temperature>``.
    """
    if not isinstance(results_by_temperature, Mapping) or not results_by_temperature:
        raise ValueError(
            "results_by_temperature must be a non-empty mapping temperature -> summarize() result"
        )
    rows = []
    for key, summary in results_by_temperature.items():
        temperature = _as_float(key, f"temperature {key!r}")
        where = f"results_by_temperature[{key!r}]"
        rows.append((temperature, _series(summary, "local", where), _series(summary, "global", where)))
    rows.sort(key=lambda row: row[0])

    mpl = _require_matplotlib()
    fig = _new_figure(mpl, (11.0, 4.2))
    ax_local, ax_global = fig.subplots(1, 2)
    cmap = mpl.colormaps["plasma"]
    for i, (temperature, local, glob) in enumerate(rows):
        # 0 .. 0.8 of plasma: dark blue (cold) to orange (hot), skipping its pale yellow end
        color = cmap(0.8 * i / (len(rows) - 1)) if len(rows) > 1 else cmap(0.0)
        label = f"T={temperature:g}"
        for ax, (ks, mean, std) in ((ax_local, local), (ax_global, glob)):
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, color=color, label=label)
    for ax, name in ((ax_local, "Local"), (ax_global, "Global")):
        ax.set_xlabel("k")
        ax.set_ylabel(f"{name} AR-ness@k")
        ax.set_title(f"{name} AR-ness@k")
        ax.set_ylim(0.0, 1.05)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_local.legend(title="temperature")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_png(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------------
# pass@k vs temperature
# ---------------------------------------------------------------------------------------------------


def _metric_sort_key(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"pass@(\d+)", name)
    return (int(match.group(1)), name) if match else (10**9, name)


def plot_pass_vs_temperature(
    table: Mapping[float, Mapping[str, float]] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Figure:
    """pass@1, pass@k, … (one line each) against sampling temperature.

    ``table`` is either ``{temperature: {"pass@1": v, "pass@10": v}}`` or a list of rows
    ``{"temperature": t, "pass@1": v, …}`` (the evaluator's summary rows; keys other than
    ``temperature`` that start with ``pass@`` are plotted). A metric missing at some temperature is
    simply not drawn there. Returns the Figure; one ``Line2D`` per metric, labelled with its name.
    """
    points: dict[str, list[tuple[float, float]]] = {}
    if isinstance(table, Mapping):
        items = [(key, row) for key, row in table.items()]
    elif isinstance(table, Sequence) and not isinstance(table, (str, bytes)):
        items = []
        for i, row in enumerate(table):
            if not isinstance(row, Mapping) or "temperature" not in row:
                raise ValueError(f"table[{i}] must be a mapping with a 'temperature' key")
            items.append((row["temperature"], {k: v for k, v in row.items() if k.startswith("pass@")}))
    else:
        raise TypeError(f"table must be a mapping or a list of rows, got {type(table).__name__}")
    if not items:
        raise ValueError("table is empty: nothing to plot")
    for key, row in items:
        temperature = _as_float(key, f"temperature {key!r}")
        if not isinstance(row, Mapping) or not row:
            raise ValueError(
                f"table entry for temperature {key!r} must be a non-empty mapping metric -> value"
            )
        for metric, value in row.items():
            points.setdefault(str(metric), []).append((temperature, _as_float(value, f"{metric} at T={key}")))

    mpl = _require_matplotlib()
    fig = _new_figure(mpl, (6.0, 4.2))
    ax = fig.subplots()
    for metric in sorted(points, key=_metric_sort_key):
        xs, ys = zip(*sorted(points[metric]))
        ax.plot(xs, ys, marker="o", label=metric)
    _finish_lines(fig, ax, path, xlabel="sampling temperature", ylabel="pass rate",
                  title=title or "pass@k vs temperature")
    return fig


def plot_speed_quality(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Figure:
    """pass@1 (with its interval) against useful tokens/s, one line per model: the speed/quality frontier of
    decoders (``bench/hybrid.py --plot``).

    ``rows``: ``{"model": name, "label": decoder, "tokens_per_s": x, "pass@1": y, "low": l, "high": h}``, with
    ``low``/``high`` optional (the 95% interval). Each model's points are joined in order of speed; the x axis
    is logarithmic (decoders span orders of magnitude). Returns the Figure; one ``Line2D`` per model, labelled
    with its name, in order of first appearance.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise ValueError("rows must be a non-empty list of mappings")
    series: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not {"model", "tokens_per_s", "pass@1"} <= set(row):
            raise ValueError(f"rows[{i}] must be a mapping with 'model', 'tokens_per_s' and 'pass@1'")
        x = _as_float(row["tokens_per_s"], f"rows[{i}] tokens_per_s")
        if x <= 0:
            raise ValueError(f"rows[{i}] tokens_per_s must be > 0 (log axis), got {x}")
        y = _as_float(row["pass@1"], f"rows[{i}] pass@1")
        low = _as_float(row.get("low", y), f"rows[{i}] low")
        high = _as_float(row.get("high", y), f"rows[{i}] high")
        series.setdefault(str(row["model"]), []).append((x, y, low, high, str(row.get("label", ""))))

    mpl = _require_matplotlib()
    fig = _new_figure(mpl, (7.0, 4.6))
    ax = fig.subplots()
    for model, points in series.items():
        points.sort()
        xs, ys, lows, highs, labels = zip(*points)
        (line,) = ax.plot(xs, ys, marker="o", label=model)
        ax.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]],
                    fmt="none", ecolor=line.get_color(), alpha=0.5, capsize=3)
        for x, y, label in zip(xs, ys, labels):
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    _finish_lines(fig, ax, path, xlabel="useful tokens/s (log)", ylabel="pass@1", title=title or "speed vs quality")
    return fig


# ---------------------------------------------------------------------------------------------------
# decode heat map: which position was committed at which step
# ---------------------------------------------------------------------------------------------------


def _as_traces(steps: Any) -> list[list[list[int]]]:
    """One trace (steps -> positions) or a list of traces -> a list of traces.

    Told apart by nesting depth: in a single trace ``steps[i][j]`` is a position (an integer); in a
    list of traces it is a step (a sequence).
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(f"steps must be a decode trace or a list of traces, got {type(steps).__name__}")
    items = list(steps)
    if not items:
        raise ValueError("steps is empty: nothing to plot")
    for item in items:
        if isinstance(item, (str, bytes)) or not isinstance(item, Iterable):
            raise TypeError(f"each step must be a sequence of positions, got {type(item).__name__}")
    first = next((x for item in items for x in item), None)
    if first is not None and isinstance(first, Iterable) and not isinstance(first, (str, bytes)):
        return [[list(step) for step in trace] for trace in items]
    return [[list(step) for step in items]]


def decode_heatmap_matrix(steps: Any, length: int) -> np.ndarray:
    """(S, L) matrix: the fraction of decodes that committed position l at step s.

    ``steps`` is one trace (``[[0], [3, 1], [2]]``) — giving a 0/1 matrix — or a list of traces,
    averaged (traces with fewer steps contribute nothing to the later rows). S is the largest number
    of steps among the traces.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    traces = _as_traces(steps)
    n_steps = max(len(trace) for trace in traces)
    matrix = np.zeros((n_steps, length), dtype=np.float64)  # (S, L)
    for i, trace in enumerate(traces):
        try:
            flat = flatten_order(trace)  # validates positions: ints, >= 0, no repeats
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"trace {i}: {exc}") from None
        if max(flat) >= length:
            raise ValueError(f"trace {i}: position {max(flat)} is outside a region of length {length}")
        for s, step in enumerate(trace):
            for p in step:
                matrix[s, int(p)] += 1.0
    return matrix / len(traces)


def plot_decode_heatmap(
    steps: Any, length: int, path: str | os.PathLike[str], title: str | None = None
) -> Figure:
    """Position (x) × step (y, first step at the top) heat map of one decode or the average of many.

    Pure left-to-right decoding is the diagonal; parallel and out-of-order commits show off it.
    Returns the Figure; the image's array is :func:`decode_heatmap_matrix` of the input.
    """
    matrix = decode_heatmap_matrix(steps, length)  # (S, L)
    n_traces = len(_as_traces(steps))
    mpl = _require_matplotlib()
    n_steps = matrix.shape[0]
    width = min(14.0, max(5.0, 2.0 + 0.04 * length))
    height = min(12.0, max(3.5, 1.5 + 0.04 * n_steps))
    fig = _new_figure(mpl, (width, height))
    ax = fig.subplots()
    image = ax.imshow(
        matrix,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        extent=(-0.5, length - 0.5, n_steps - 0.5, -0.5),  # row 0 (the first step) at the top
    )
    fig.colorbar(image, ax=ax, label="committed" if n_traces == 1 else f"fraction of {n_traces} decodes")
    ax.set_xlabel("position in the generated region")
    ax.set_ylabel("decoding step")
    ax.set_title(title or ("decode order" if n_traces == 1 else f"decode order, {n_traces} decodes"))
    fig.tight_layout()
    _save_png(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------------
# one generation's text coloured by commit step
# ---------------------------------------------------------------------------------------------------


def layout_tokens(token_texts: Sequence[str], max_columns: int = 80) -> list[tuple[int, str, int, int]]:
    """Place tokens as monospace text: ``(token_index, piece, line, column)`` for each visible piece.

    Newlines inside a token end the line (a token may yield several pieces), tabs become 4 spaces, a
    token that would cross ``max_columns`` starts a new line, and a piece longer than a whole line is
    cut into line-sized chunks. Empty pieces are dropped.
    """
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise ValueError(f"max_columns must be a positive int, got {max_columns!r}")
    placed: list[tuple[int, str, int, int]] = []
    line, col = 0, 0
    for index, text in enumerate(token_texts):
        if not isinstance(text, str):
            raise TypeError(f"token_texts[{index}] must be a str, got {type(text).__name__}")
        for n, piece in enumerate(text.replace("\t", "    ").split("\n")):
            if n > 0:  # the token contained a newline
                line, col = line + 1, 0
            while piece:
                if col > 0 and col + len(piece) > max_columns:
                    line, col = line + 1, 0
                chunk, piece = piece[:max_columns], piece[max_columns:]
                placed.append((index, chunk, line, col))
                col += len(chunk)
    return placed


def plot_decode_order(
    tokens_text: Sequence[str],
    commit_step: Sequence[int | None],
    path: str | os.PathLike[str],
    max_columns: int = 80,
    title: str | None = None,
    revised: Sequence[bool] | None = None,
) -> Figure:
    """One generation laid out as text, each token coloured by the step that committed it.

    ``revised[i]`` marks a token a revising decoder took back at least once (``--revise``): it is framed, and
    coloured by the step of its final assignment.

    ``commit_step[i]`` is the step that committed token ``i`` (see
    :func:`unmask.analysis.arness.commit_steps`), or ``None`` for a token never committed (drawn grey).
    Colours run along ``viridis`` from the first step (dark) to the last (yellow), with a colorbar.
    Returns the Figure; ``ax.texts`` holds one Text per placed piece, in reading order.
    """
    if len(tokens_text) != len(commit_step):
        raise ValueError(
            f"tokens_text has {len(tokens_text)} tokens but commit_step has {len(commit_step)} entries"
        )
    if not tokens_text:
        raise ValueError("tokens_text is empty: nothing to plot")
    if revised is not None and len(revised) != len(tokens_text):
        raise ValueError(f"revised has {len(revised)} entries for {len(tokens_text)} tokens")
    steps: list[int | None] = []
    for i, s in enumerate(commit_step):
        if s is None:
            steps.append(None)
            continue
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"commit_step[{i}] must be a step index >= 0 or None, got {s!r}")
        steps.append(int(s))
    placed = layout_tokens(tokens_text, max_columns)  # validates the texts

    mpl = _require_matplotlib()
    # at least 8 rows tall so the colorbar stays readable for a one-line generation
    n_lines = max(8, max((line for _, _, line, _ in placed), default=0) + 1)
    n_cols = max(10, max((col + len(piece) for _, piece, _, col in placed), default=0))
    committed = [s for s in steps if s is not None]
    last_step = max(committed, default=0)
    norm = mpl.colors.Normalize(vmin=0, vmax=max(last_step, 1))
    cmap = mpl.colormaps["viridis"]

    # size the axes so one data unit is one monospace glyph wide and one line high
    margin, bar, top = 0.3, 1.1, 0.5 if title else 0.2
    text_w, text_h = n_cols * _CHAR_WIDTH_IN, n_lines * _LINE_HEIGHT_IN
    fig_w, fig_h = text_w + 2 * margin + bar, text_h + margin + top
    fig = _new_figure(mpl, (fig_w, fig_h))
    ax = fig.add_axes((margin / fig_w, margin / fig_h, text_w / fig_w, text_h / fig_h))
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    for index, piece, line, col in placed:
        step = steps[index]
        color = "0.6" if step is None else cmap(norm(step))
        ax.text(
            col,
            line + 0.5,
            piece,
            color=color,
            fontfamily="monospace",
            fontsize=_FONT_SIZE,
            ha="left",
            va="center",
            parse_math=False,  # code is full of '$' and '_' — never mathtext
            bbox=_REVISED_FRAME if revised is not None and revised[index] else None,
        )
    cax = fig.add_axes(((margin + text_w + 0.25) / fig_w, margin / fig_h, 0.15 / fig_w, text_h / fig_h))
    mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, cax=cax, label="commit step")
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / fig_h, va="top")
    _save_png(fig, path)
    return fig
