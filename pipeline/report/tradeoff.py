"""The IR-vs-STS trade-off: every model's (STS Spearman, IR nDCG@10), its Pareto front, and the plot.

matplotlib is imported inside ``plot_tradeoff`` and drawn on an Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import storage
from pipeline.report.tables import Results, metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Label offsets in points, near the marker first, then farther out (with a leader line).
_DIRECTIONS = [(1, 0.6), (1, -1), (-1, 0.6), (-1, -1), (0, 1), (0, -1.2), (1.3, 0), (-1.3, 0)]
_OFFSETS = [(r * dx, r * dy) for r in (8, 22, 36) for dx, dy in _DIRECTIONS]


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point dominates (maximising both coordinates), by x ascending.

    A point is dominated when another is at least as good on both coordinates and better on one;
    identical points are all kept. Coordinates must be finite."""

    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())

    front = [name for name, p in points.items() if not dominated(p)]
    return sorted(front, key=lambda n: (points[n][0], -points[n][1], n))


def tradeoff_points(
    results: Results, *, sts_bench: str = "stsb-test", ir_bench: str = "scifact-test"
) -> dict[str, tuple[float, float]]:
    """(STS Spearman, IR nDCG@10) of every model that has both."""
    points = {}
    for model in results:
        x, y = (
            metric(results, model, sts_bench, "spearman"),
            metric(results, model, ir_bench, "ndcg@10"),
        )
        if x is not None and y is not None:
            points[model] = (x, y)
    return points


_STYLES = {  # kind of model -> scatter style (s: marker area in points^2)
    "registered": {"marker": "*", "s": 320, "color": "crimson", "zorder": 5},
    "base (pre-trained)": {"marker": "s", "s": 80, "color": "dimgray", "zorder": 4},
    "fused": {"marker": "D", "s": 55, "color": "tab:purple", "zorder": 3},
    "trained (one run)": {"marker": "o", "s": 60, "color": "tab:blue", "zorder": 3},
}


def _kind(model: str, chosen: str) -> str:
    if model == chosen:
        return "registered"
    if model == "base":
        return "base (pre-trained)"
    return "fused" if model.startswith("fused:") else "trained (one run)"


def _annotate(
    ax, text: str, xy: tuple[float, float], offset: tuple[float, float], bold: bool, leader: bool
):
    dx, dy = offset
    return ax.annotate(
        text,
        xy,
        xytext=offset,
        textcoords="offset points",
        ha="left" if dx > 0 else "right" if dx < 0 else "center",
        va="bottom" if dy > 0 else "top" if dy < 0 else "center",
        fontsize=9,
        fontweight="bold" if bold else "normal",
        arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.6} if leader else None,
    )


def _clashes(box, ax, markers: list[tuple[float, float, float]], boxes: list) -> int:
    """How badly a label box sits: outside the axes, over a marker (x, y, radius in px), over a label."""
    outside = not (ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1))
    covered = sum(
        box.x0 - r < x < box.x1 + r and box.y0 - r < y < box.y1 + r for x, y, r in markers
    )
    return 100 * outside + 10 * covered + sum(box.overlaps(b) for b in boxes)


def _place_labels(fig: Figure, ax, points: Mapping[str, tuple[float, float]], chosen: str) -> None:
    """Label each point (one label per set of identical points, names joined by " = ") at the first
    offset where it stays inside the axes and covers no other marker nor an earlier label; failing
    that, at the offset with the fewest such clashes. Far offsets get a leader line."""
    renderer = fig.canvas.get_renderer()
    groups: dict[tuple[float, float], list[str]] = {}
    for name, p in points.items():
        groups.setdefault(p, []).append(name)
    radius = {  # marker radius in points
        p: max(_STYLES[_kind(m, chosen)]["s"] ** 0.5 / 2 for m in names)
        for p, names in groups.items()
    }
    px = fig.dpi / 72
    order = sorted(groups.items(), key=lambda kv: (chosen not in kv[1], -kv[0][1], kv[0][0]))
    boxes = []
    for xy, names in order:
        label, bold, scale = " = ".join(names), chosen in names, max(1.0, radius[xy] / 5)
        others = [(*ax.transData.transform(p), px * r) for p, r in radius.items() if p != xy]
        best = None
        for dx, dy in _OFFSETS:
            offset = (scale * dx, scale * dy)
            text = _annotate(ax, label, xy, offset, bold, leader=False)
            box = text.get_window_extent(renderer).padded(2)
            text.remove()
            score = _clashes(box, ax, others, boxes)
            if best is None or score < best[0]:
                best = (score, offset, box)
            if score == 0:
                break
        _annotate(
            ax, label, xy, best[1], bold, leader=abs(best[1][0]) + abs(best[1][1]) > 15 * scale
        )
        boxes.append(best[2])


def _draw_front(ax, front: list[tuple[float, float]]) -> None:
    """The Pareto front as a step line run out to the axes' edges, the region it dominates shaded."""
    if not front:
        return
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    xs = [x0] + [x for x, _ in front] + [front[-1][0]]
    ys = [front[0][1]] + [y for _, y in front] + [y0]
    ax.step(
        xs, ys, where="pre", color="darkorange", lw=1.5, ls="--", zorder=2, label="Pareto front"
    )
    ax.fill_between(xs, ys, y0, step="pre", color="darkorange", alpha=0.07, lw=0, zorder=1)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def plot_tradeoff(
    results: Results,
    out_path: str,
    *,
    chosen: str,
    sts_bench: str = "stsb-test",
    ir_bench: str = "scifact-test",
) -> Figure:
    """Plot IR nDCG@10 (y) against STS Spearman (x) for every model, the Pareto front as a step line,
    the registered model as a star and the base as a square; save a PNG at ``out_path`` (local or URI)
    and return the figure."""
    return plot_pareto(
        tradeoff_points(results, sts_bench=sts_bench, ir_bench=ir_bench),
        out_path,
        chosen=chosen,
        xlabel=f"STS: {sts_bench} Spearman (x100)",
        ylabel=f"IR: {ir_bench} nDCG@10 (x100)",
        title="IR vs STS trade-off (up and right is better)",
    )


@dataclass(frozen=True)
class Panel:
    """One scatter of named (x, y) points with its axis labels and title."""

    points: Mapping[str, tuple[float, float]]
    xlabel: str
    ylabel: str
    title: str


def plot_pareto(
    points: Mapping[str, tuple[float, float]],
    out_path: str,
    *,
    chosen: str,
    xlabel: str,
    ylabel: str,
    title: str,
    chosen_label: str = "registered",
) -> Figure:
    """Scatter named (x, y) points with their Pareto front; ``chosen`` is drawn as a star (legend
    ``chosen_label``), ``base`` as a square, names starting ``fused:`` as diamonds. Saves a PNG."""
    panel = Panel(points, xlabel, ylabel, title)
    return plot_pareto_panels([panel], out_path, chosen=chosen, chosen_label=chosen_label)


def plot_pareto_panels(
    panels: list[Panel], out_path: str, *, chosen: str, chosen_label: str = "registered"
) -> Figure:
    """:func:`plot_pareto` with several panels side by side (the same models on different axes,
    each panel with its own front); the legend sits right of the last panel. Saves a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.5 + 7 * len(panels), 6), dpi=130)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, chosen, chosen_label)
    if panels[-1].points:
        axes[-1].legend(
            loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8, markerscale=0.7
        )
    fig.tight_layout()
    for ax, panel in zip(axes, panels):
        _place_labels(fig, ax, panel.points, chosen)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(out_path, buffer.getvalue())
    return fig


def _draw_panel(ax, panel: Panel, chosen: str, chosen_label: str) -> None:
    points = panel.points
    for kind, style in _STYLES.items():
        xy = [p for m, p in points.items() if _kind(m, chosen) == kind]
        if xy:
            label = chosen_label if kind == "registered" else kind
            ax.scatter(*zip(*xy), edgecolors="black", linewidths=0.6, label=label, **style)
    if "base" in points:
        ax.axvline(points["base"][0], color="dimgray", lw=0.6, ls=":", zorder=1)
        ax.axhline(points["base"][1], color="dimgray", lw=0.6, ls=":", zorder=1)
    ax.margins(0.15)
    _draw_front(ax, [points[n] for n in pareto_front(points)])
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title)
    ax.grid(True, alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no model has both scores", ha="center", transform=ax.transAxes)
