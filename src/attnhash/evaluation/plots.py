"""Figures of the papers: PR curves by Hamming radius, P@N curves, P@H<=2 and mAP against code length,
training curves, a t-SNE of codes, top-10 retrieval grids.

One `Style` serves every figure of a report, so a method keeps one colour and one marker throughout;
legends sit outside the axes (to the right), so they never hide a curve however many rows there are; code
lengths are categorical ticks, one per length, as in the papers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attnhash.evaluation.records import Cell, Results, group  # noqa: E402

COLOURS = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


class Style:
    """Colour and marker of each row, fixed by the order rows are given (every (colour, marker) pair distinct)."""

    def __init__(self, rows: list[str]):
        self.rows = list(rows)

    def colour(self, row: str):
        return COLOURS[self._index(row) % len(COLOURS)]

    def marker(self, row: str) -> str:
        i = self._index(row)
        return MARKERS[(i + i // len(COLOURS)) % len(MARKERS)]

    def _index(self, row: str) -> int:
        if row not in self.rows:
            self.rows.append(row)
        return self.rows.index(row)

    def kwargs(self, row: str) -> dict:
        return {"color": self.colour(row), "marker": self.marker(row), "label": row}


def _legend_outside(fig: Figure, axes) -> None:
    """One legend for the figure, right of the last axes, outside every plot area."""
    handles, labels = {}, []
    for ax in np.atleast_1d(axes).flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if labels:
        fig.legend([handles[k] for k in labels], labels, loc="upper left", bbox_to_anchor=(1.0, 0.95),
                   fontsize=8, frameon=False, borderaxespad=0.0)


def _panels(n: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """PNG with the outside legend kept in the picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _mean_curve(cell: Cell, key: str, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A curve of the cell's records, averaged over seeds point by point (same x grid in every seed)."""
    curves = []
    for r in cell.records.values():
        c = r.get(key)
        if not c:
            continue
        if key == "precision_at_n":
            ns = sorted(int(n) for n in c)
            curves.append((np.array(ns, float), np.array([c[str(n)] if str(n) in c else c[n] for n in ns])))
        else:
            curves.append((np.asarray(c[x], float), np.asarray(c[y], float)))
    if not curves or any(len(cx) != len(curves[0][0]) for cx, _ in curves):
        return curves[0] if curves else None
    return np.mean([cx for cx, _ in curves], axis=0), np.mean([cy for _, cy in curves], axis=0)


def _by_bits(results: Results, dataset: str) -> list[int]:
    return [b for b in results.bits if any(results.get(row, dataset, b) for row in results.rows)]


def _curves_figure(results: Results, style: Style, dataset: str, key: str, x: str, y: str, title: str,
                   xlabel: str, xlim: tuple | None = None, thin_markers: bool = False) -> Figure | None:
    """One panel per code length, one seed-averaged curve (record field `key`) per row."""
    bits = _by_bits(results, dataset)
    if not bits:
        return None
    fig, axes = _panels(len(bits))
    for ax, b in zip(axes.flat, bits):
        for row in results.rows:
            cell = results.get(row, dataset, b)
            curve = _mean_curve(cell, key, x, y) if cell else None
            if curve is not None:
                every = {"markevery": max(1, len(curve[0]) // 8)} if thin_markers else {}
                ax.plot(curve[0], curve[1], markersize=3, linewidth=1.2, **every, **style.kwargs(row))
        ax.set(xlabel=xlabel, ylabel="precision", ylim=(0, 1.02), title=f"{dataset}, {b} bits")
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pr_figure(results: Results, style: Style, dataset: str) -> Figure | None:
    """Precision-recall by Hamming radius, one panel per code length."""
    return _curves_figure(results, style, dataset, "pr_curve", "recall", "precision",
                          "Precision-recall (Hamming radius 0..K)", "recall", xlim=(0, 1), thin_markers=True)


def pn_figure(results: Results, style: Style, dataset: str) -> Figure | None:
    """Precision of the top N, one panel per code length."""
    return _curves_figure(results, style, dataset, "precision_at_n", "", "", "Precision of the top N",
                          "N (top results)")


def metric_vs_bits_figure(results: Results, style: Style, metric: str, ylabel: str) -> Figure | None:
    """One line per row over code lengths (one tick per length), mean +- sd over seeds as error bars; one
    panel per dataset."""
    datasets = [d for d in results.datasets if _by_bits(results, d)]
    if not datasets:
        return None
    fig, axes = _panels(len(datasets), width=4.2)
    for ax, dataset in zip(axes.flat, datasets):
        bits = _by_bits(results, dataset)
        pos = {b: i for i, b in enumerate(bits)}
        for row in results.rows:
            pts = [(pos[b], c.mean(metric), c.sd(metric) or 0.0) for b in bits
                   if (c := results.get(row, dataset, b)) is not None and c.mean(metric) is not None]
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e if any(e) else None, capsize=3, markersize=5, linewidth=1.2,
                            **style.kwargs(row))
        ax.set_xticks(range(len(bits)), [str(b) for b in bits])
        ax.set_xlim(-0.4, len(bits) - 0.6)
        ax.set(xlabel="code length (bits)", ylabel=ylabel, title=dataset)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.tight_layout()
    return fig


def training_curves_figure(logs: dict[tuple[str, int], list[dict]], style: Style, key: str = "loss") -> Figure | None:
    """`key` per epoch from the runs' log.jsonl, one panel per code length: logs[(row, bits)] = records."""
    bits = sorted({b for _, b in logs})
    if not bits:
        return None
    fig, axes = _panels(len(bits))
    for ax, b in zip(axes.flat, bits):
        for (row, rb), log in logs.items():
            pts = [(r["epoch"], r[key]) for r in log if rb == b and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), markersize=4, linewidth=1.2, **style.kwargs(row))
        ax.set(xlabel="epoch", ylabel=key, title=f"{b} bits")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.suptitle(f"Training {key} per epoch (seed 0)", fontsize=10)
    fig.tight_layout()
    return fig


def scatter_figure(points: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str], title: str) -> Figure:
    """One panel per run: 2-D points coloured by class (a t-SNE of codes), one legend of the classes."""
    fig, axes = _panels(len(points), width=3.4, height=3.4)
    for ax, (name, (xy, cls)) in zip(axes.flat, points.items()):
        for c in np.unique(cls):
            pick = cls == c
            label = class_names[c] if 0 <= c < len(class_names) else str(c)
            ax.scatter(xy[pick, 0], xy[pick, 1], s=3, color=COLOURS[int(c) % len(COLOURS)], label=label,
                       rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _legend_outside(fig, axes)
    for lh in fig.legends[0].legend_handles if fig.legends else []:
        lh.set_sizes([20])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def retrieval_grid_figure(queries: list[dict], title: str) -> Figure:
    """Rows of query + top results: each query a dict with `image`, `label`, and `hits`, a list of dicts with
    `image`, `label`, `distance`, `relevant`. Results get a green frame and a check mark when relevant, a red
    frame and a cross when not, a grey frame when unknown (relevant None: a query without a label)."""
    n = max(len(q["hits"]) for q in queries) + 1
    fig, axes = plt.subplots(len(queries), n, figsize=(1.25 * n, 1.55 * len(queries)), squeeze=False)
    for row_axes, q in zip(axes, queries):
        _tile(row_axes[0], q["image"], f"query\n{q['label']}", "#333333")
        for ax, hit in zip(row_axes[1:], q["hits"]):
            relevant = hit.get("relevant")
            colour = "#888888" if relevant is None else "#1a9641" if relevant else "#d7191c"
            mark = "" if relevant is None else "✓ " if relevant else "✗ "
            _tile(ax, hit["image"], f"{mark}{hit['label']}\nd={hit['distance']}", colour)
        for ax in row_axes[1 + len(q["hits"]):]:
            ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tile(ax, image: np.ndarray, text: str, colour: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(text, fontsize=7, color=colour)


# ----- the figures of one run and of a grid's Markdown report ---------------------------------------------
def plot_run(result: dict, out_dir: Path) -> list[Path]:
    """PR and P@N figures of one evaluated run (`attnhash evaluate`)."""
    out_dir = Path(out_dir)
    results = group([result])
    style = Style(results.rows)
    dataset = results.datasets[0]
    return [save(pr_figure(results, style, dataset), out_dir / "pr_curve.png"),
            save(pn_figure(results, style, dataset), out_dir / "precision_at_n.png")]


__all__ = ["Style", "pr_figure", "pn_figure", "metric_vs_bits_figure", "training_curves_figure", "scatter_figure",
           "retrieval_grid_figure", "save", "plot_run"]
