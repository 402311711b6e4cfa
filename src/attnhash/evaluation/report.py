"""The Markdown report of an experiment grid: the papers' tables (one row per method, one column per code
length; mean +- sd where a row has several seeds; best per column in bold) and their figures, linked."""

from __future__ import annotations

from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.plots import Style, metric_vs_bits_figure, pn_figure, pr_figure, save
from attnhash.evaluation.records import Results, group
from attnhash.evaluation.tables import Table, ablation_pairs, comparisons_markdown, paired_tests, to_markdown

TABLE_METRICS = ("mAP", "mAP_tie_aware", "precision_hamming2", "train_seconds")


def describe_setting(results: Results) -> str:
    records = results.records()
    r = records[0]
    top = "ALL" if r.get("topk") in (None, 0) else r["topk"]
    backbones = ", ".join(dict.fromkeys(str(x.get("backbone")) for x in records))
    sizes = ", ".join(dict.fromkeys(f"{x['config']['data']['image_size']} px" for x in records
                                    if (x.get("config") or {}).get("data", {}).get("image_size")))
    return (f"dataset {r.get('dataset')} ({r.get('protocol')} protocol: {r.get('num_queries')} queries, "
            f"{r.get('num_database')} database items), backbone {backbones}"
            + (f", input {sizes}" if sizes else "") + f", metric mAP@{top}")


def markdown_report(results: list[dict], title: str, notes: str = "", figures: list[tuple[str, str]] = (),
                    pairs: list[tuple[str, str]] | None = None) -> str:
    """The report's Markdown; `figures` are (caption, relative path) pairs to link; `pairs` (row, against) the
    comparisons to test (default: each row against its ablations, when rows have several seeds)."""
    cells = group(results)
    parts = [f"# {title}", "", describe_setting(cells), ""]
    for metric in TABLE_METRICS:
        parts += [to_markdown(Table.of(cells, metric)), ""]
    pairs = ablation_pairs(cells) if pairs is None else pairs
    if pairs and cells.max_seeds > 1:
        parts += [comparisons_markdown(paired_tests(cells, pairs)), ""]
    for caption, path in figures:
        parts += [f"![{caption}]({path})", ""]
    if notes:
        parts += [notes, ""]
    return "\n".join(parts)


def write_figures(results: list[dict], out_dir: Path) -> list[tuple[str, str]]:
    """The grid's PR, P@N, P@H<=2 and mAP figures as PNG files in out_dir: (caption, file name) pairs."""
    cells = group(results)
    style = Style(cells.rows)
    written = []
    for dataset in cells.datasets:
        suffix = "" if len(cells.datasets) == 1 else f"_{dataset}"
        for name, fig in ((f"pr{suffix}.png", pr_figure(cells, style, dataset)),
                          (f"pn{suffix}.png", pn_figure(cells, style, dataset))):
            if fig is not None:
                save(fig, out_dir / name)
                written.append((f"{'PR' if name.startswith('pr') else 'P@N'} curves, {dataset}", name))
    for name, metric, label in (("p_h2.png", "precision_hamming2", "P@H<=2"), ("map_bits.png", "mAP", "mAP")):
        fig = metric_vs_bits_figure(cells, style, metric, label)
        if fig is not None:
            save(fig, out_dir / name)
            written.append((f"{label} against code length", name))
    return written


def write_report(results: list[dict], out_dir: Path, title: str, notes: str = "",
                 pairs: list[tuple[str, str]] | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("pr_*bits.png"), *out_dir.glob("pn_*bits.png")]:
        stale.unlink()  # the one-figure-per-length files of earlier versions: the panels replace them
    figures = write_figures(results, out_dir)
    path = out_dir / "report.md"
    atomic_write_text(path, markdown_report(results, title, notes, figures, pairs))
    return path
