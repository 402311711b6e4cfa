"""One self-contained HTML page of a set of results, laid out like the papers (`attnhash report`).

From the records alone (a grid's results.json carries every curve): the tables (methods x dataset x bits,
mean +- sd over seeds, best per column in bold), each method against its ablation with a paired test where
there are seeds, PR and P@N curves per code length, P@H<=2 and mAP against code length. Where the run
folders are still on disk (checkpoint, log.jsonl and the evaluation's codes.npz), also: training curves,
a t-SNE of database codes coloured by class, top-10 grids for several queries with class names and
right/wrong frames, and the attention maps over query images. Figures are embedded as base64 PNG, so the
page is one file; the tables are also written as CSV and LaTeX beside it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from attnhash.atomic import atomic_write_text
from attnhash.errors import AttnHashError
from attnhash.evaluation import plots
from attnhash.evaluation.records import Results, group, run_folder
from attnhash.evaluation.report import TABLE_METRICS, describe_setting
from attnhash.evaluation.tables import (
    Table,
    ablation_pairs,
    comparisons_html,
    paired_tests,
    to_csv,
    to_html,
    to_latex,
)

TSNE_POINTS = 1500  # database items per t-SNE panel (a seeded sample)
TSNE_PANELS = 6
GRID_QUERIES = 5
OVERLAY_IMAGES = 4

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child{text-align:left}
td.text{text-align:left}
thead th{background:#f3f3f3;text-align:center}tbody th{font-weight:normal}
.note{color:#666;font-weight:normal}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
img{max-width:100%}
"""


@dataclass
class Page:
    """Sections of the page as HTML fragments, and what could not be drawn (said on the page)."""

    title: str
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def section(self, heading: str, *fragments: str) -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.extend(fragments)

    def html(self) -> str:
        missing = ""
        if self.missing:
            missing = ("<h2>Not drawn</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in self.missing)
                       + "</ul>")
        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + missing + "</body></html>\n")


def embedded(fig, caption: str, dpi: int = 100) -> str:
    """A figure as an <img> with its PNG inline (base64)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plots.plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_html_report(records: list[dict], out: str | Path, title: str,
                      pairs: list[tuple[str, str]] | None = None, notes: str = "",
                      log: Callable[[str], None] = print, run_figures: bool = True) -> list[Path]:
    """Write OUT (the page), OUT.csv and OUT.tex; returns their paths. `pairs`: (row, against) comparisons
    (default: each row against its ablations, found from the records' configs). `run_figures`: draw the
    figures that need run folders (training curves, t-SNE, top-10 grids, attention maps) when they exist."""
    out = Path(out)
    results = group(records)
    style = plots.Style(results.rows)
    page = Page(title)
    page.parts.append(f"<p>{html.escape(describe_setting(results))}. {len(records)} evaluated runs"
                      + (f", up to {results.max_seeds} training seeds per cell" if results.max_seeds > 1 else "")
                      + ".</p>")
    if notes:
        page.parts.append(f"<p>{html.escape(notes)}</p>")
    codes = sorted({str(r["code"]) for r in records if r.get("code")})
    if codes:
        page.parts.append(f"<p class=note>Measured by attnhash {html.escape(', '.join(codes))} (version+commit of "
                          "each record).</p>")

    tables = [Table.of(results, m) for m in TABLE_METRICS]
    page.section("Tables", *(to_html(t) for t in tables if t.columns))
    pairs = ablation_pairs(results) if pairs is None else pairs
    if pairs:
        comparisons = paired_tests(results, pairs)
        if comparisons:
            page.section("Attention against its ablation", comparisons_html(comparisons),
                         "<p class=note>Paired t-test over the training seeds both rows share (scipy.stats."
                         "ttest_rel, two-sided); &ldquo;helps&rdquo;/&ldquo;hurts&rdquo; at p &lt; 0.05, else "
                         "&ldquo;cannot be told apart&rdquo;. With 3 seeds the test has 2 degrees of freedom.</p>")

    figures = []
    for metric, label in (("mAP", "mAP"), ("precision_hamming2", "P@H<=2")):
        fig = plots.metric_vs_bits_figure(results, style, metric, label)
        if fig is not None:
            figures.append(embedded(fig, f"{label} against code length"
                                    + (" (mean ± sd over seeds)" if results.max_seeds > 1 else "")))
    for dataset in results.datasets:
        for make, what in ((plots.pr_figure, "Precision-recall curves by Hamming radius"),
                           (plots.pn_figure, "Precision of the top N")):
            fig = make(results, style, dataset)
            if fig is not None:
                figures.append(embedded(fig, f"{what}, {dataset}"
                                        + (" (mean over seeds)" if results.max_seeds > 1 else "")))
    page.section("Retrieval figures", *figures)

    if run_figures:
        _run_sections(page, results, style, log)
    else:
        page.missing.append("figures from run folders (training curves, t-SNE, top-10 grids, attention maps): "
                            "not asked for")

    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, tex_path = out.with_suffix(".csv"), out.with_suffix(".tex")
    atomic_write_text(out, page.html())
    atomic_write_text(csv_path, to_csv(results))
    atomic_write_text(tex_path, "% " + title.replace("\n", " ") + "\n% \\usepackage{booktabs}\n\n"
                      + "\n\n".join(to_latex(t) for t in tables if t.columns) + "\n")
    return [out, csv_path, tex_path]


# ----- the figures that need run folders ------------------------------------------------------------------
def _run_sections(page: Page, results: Results, style: plots.Style, log) -> None:
    runs = {key: run for key, cell in results.cells.items() if (run := run_folder(cell.first())) is not None}
    if not runs:
        page.missing.append("training curves, t-SNE of codes, top-10 grids and attention maps: they need the run "
                            "folders (checkpoint, log.jsonl, codes.npz), and none of the records' runs is on disk")
        return
    log(f"report: {len(runs)} of {len(results.cells)} cells have their run folder")
    logs = {(row, bits): run.read_log() for (row, _, bits), run in runs.items()}
    fig = plots.training_curves_figure({k: v for k, v in logs.items() if v}, style)
    if fig is not None:
        page.section("Training curves", embedded(fig, "training loss per epoch (the first seed of each cell)"))
    else:
        page.missing.append("training curves: the run folders have no log.jsonl")

    with_codes = {key: (run, codes) for key, run in runs.items() if (codes := _codes(run)) is not None}
    if not with_codes:
        page.missing.append("t-SNE and top-10 grids: the run folders have no current codes.npz "
                            "(run attnhash evaluate on them)")
    else:
        _tsne_section(page, results, with_codes, log)
        _top10_section(page, results, with_codes, log)
    _attention_section(page, results, runs, log)


def _codes(run):
    try:
        return run.load_codes(run.fingerprint())
    except OSError:
        return None


def _class_names(run, n: int) -> list[str]:
    from attnhash.inference import Encoder

    try:
        names = Encoder(run, device="cpu").class_names
    except AttnHashError:  # a checkpoint that no longer loads: numbered classes are still a picture
        names = None
    return list(names) if names else [str(i) for i in range(n)]


def _pick_bits(keys) -> int:
    """The code length to draw run figures at: the longest that most rows have."""
    counts: dict[int, int] = {}
    for _, _, bits in keys:
        counts[bits] = counts.get(bits, 0) + 1
    return max(counts, key=lambda b: (counts[b], b))


def _tsne_section(page: Page, results: Results, with_codes: dict, log) -> None:
    from sklearn.manifold import TSNE

    from attnhash.codes import unpack_codes

    bits = _pick_bits(with_codes)
    chosen = [(key, v) for key, v in with_codes.items() if key[2] == bits][:TSNE_PANELS]
    points, names, shown = {}, None, 0
    for (row, dataset, _), (run, codes) in chosen:
        labels = codes.db_labels
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(labels), size=min(TSNE_POINTS, len(labels)), replace=False))
        x = unpack_codes(codes.db_codes[pick], bits).astype(np.float32)
        log(f"report: t-SNE of {len(pick)} {bits}-bit database codes of {row}")
        xy = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(x)
        classes = np.argmax(labels[pick], axis=1)  # the first label of multi-label items
        points[row if len(results.datasets) == 1 else f"{row} ({dataset})"] = (xy, classes)
        shown = max(shown, len(pick))
        names = names or _class_names(run, labels.shape[1])
    fig = plots.scatter_figure(points, names or [], f"t-SNE of {bits}-bit database codes (Euclidean = 2 sqrt(Hamming))")
    page.section("t-SNE of the database codes",
                 embedded(fig, f"{shown} database items per run (a seeded sample), coloured by class"
                          + (" (first label)" if any(c.db_labels.sum(1).max() > 1 for _, c in with_codes.values())
                             else "")))


def _top10_section(page: Page, results: Results, with_codes: dict, log) -> None:
    from attnhash.codes import hamming_distances
    from attnhash.data import prepare_data

    bits = _pick_bits(with_codes)
    at_bits = {key: v for key, v in with_codes.items() if key[2] == bits}
    ranked = sorted(at_bits, key=lambda k: results.cells[k].mean("mAP") or 0.0, reverse=True)
    picks = ranked[:1] + (ranked[-1:] if len(ranked) > 1 else [])  # the best and the weakest row
    fragments = []
    for key in picks:
        run, codes = at_bits[key]
        if codes.query_index is None or codes.db_index is None:
            page.missing.append(f"top-10 grid of {key[0]}: its codes.npz does not say which images they are")
            continue
        cfg = run.load_config()
        try:
            data = prepare_data(cfg.data)
        except (AttnHashError, OSError) as err:  # the data moved or is not on this machine: say so, draw the rest
            page.missing.append(f"top-10 grid of {key[0]}: the dataset cannot be opened ({err})")
            continue
        names = _class_names(run, codes.db_labels.shape[1])
        queries = _diverse_queries(codes.query_labels, GRID_QUERIES)
        dist = hamming_distances(codes.query_codes[queries], codes.db_codes)
        rows = []
        for qi, d in zip(queries, dist):
            order = np.argsort(d, kind="stable")[:10]  # ties in database order, as the metrics
            ql = codes.query_labels[qi]
            rows.append({"image": data.source.image(int(codes.query_index[qi])), "label": _label(ql, names),
                         "hits": [{"image": data.source.image(int(codes.db_index[j])), "distance": int(d[j]),
                                   "label": _label(codes.db_labels[j], names),
                                   "relevant": bool((codes.db_labels[j] & ql).any())} for j in order]})
        mean = results.cells[key].mean("mAP")
        log(f"report: top-10 grid of {key[0]}")
        fig = plots.retrieval_grid_figure(rows, f"{key[0]}, {bits} bits (mAP {mean:.4f})")
        fragments.append(embedded(fig, f"{key[0]}: top 10 of {len(rows)} queries of different classes; green ✓ "
                                  "relevant (shares a label), red ✗ not; d = Hamming distance"))
    if fragments:
        page.section("Top-10 retrieval", *fragments)


def _diverse_queries(labels: np.ndarray, n: int) -> list[int]:
    """The first query of each of the first n classes that have one (a fixed, readable choice)."""
    picks, seen = [], set()
    for i, row in enumerate(labels):
        c = int(np.argmax(row)) if row.any() else -1
        if c not in seen:
            seen.add(c)
            picks.append(i)
        if len(picks) == n:
            break
    return picks


def _label(row: np.ndarray, names: list[str]) -> str:
    found = [names[c] if c < len(names) else str(c) for c in np.flatnonzero(row)]
    return ", ".join(found) or "(none)"


def _attention_section(page: Page, results: Results, runs: dict, log) -> None:
    from attnhash.data import prepare_data
    from attnhash.evaluation.explain import map_size_advice, network_maps, output_stride, upsample
    from attnhash.inference import Encoder

    bits = _pick_bits(runs)
    tiles, advice, images = [], None, None
    for key, run in runs.items():
        if key[2] != bits:
            continue
        encoder = Encoder(run, device="cpu")
        if encoder.model.attention is None or not hasattr(encoder.model.attention, "last_map"):
            continue
        if images is None:
            data = prepare_data(encoder.config.data)
            chosen = [data.query[i] for i in _diverse_queries(data.labels[data.query], OVERLAY_IMAGES)]
            images = [data.source.image(int(i)) for i in chosen]
        maps, _, what = network_maps(encoder, images, "attention")
        advice = advice or map_size_advice(min(maps.shape[1:]), encoder.image_size, output_stride(encoder))
        tiles.append((key[0], what, maps))
    if not tiles:
        page.missing.append("attention maps: no run with an attention module after the backbone has its folder")
        return
    log(f"report: attention maps of {len(tiles)} runs")
    fig, axes = plots.plt.subplots(len(tiles), len(images), figsize=(1.8 * len(images), 1.9 * len(tiles)),
                                   squeeze=False)
    for ax_row, (row, _what, maps) in zip(axes, tiles):
        for ax, image, amap in zip(ax_row, images, maps):
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            h, w = image.shape[:2]
            ax.imshow(upsample(amap, h, w), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"{row}\n{maps.shape[1]}x{maps.shape[2]}", fontsize=8)
    fig.tight_layout()
    caption = f"Attention maps ({bits} bits) over {len(images)} query images, one row per method"
    page.section("Attention maps", embedded(fig, caption)
                 + (f"<p class=note>{html.escape(advice)}</p>" if advice else ""))
