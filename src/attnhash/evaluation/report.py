"""Tables and figures of a set of evaluated runs, laid out like the papers: one row per method, one column
per code length, for mAP and the other metrics, in Markdown (and the JSON they come from)."""

from __future__ import annotations

from pathlib import Path

from attnhash.atomic import atomic_write_text
from attnhash.evaluation.plots import plot_h2, plot_pn, plot_pr


def _rows_and_bits(results: list[dict]) -> tuple[list[str], list[int]]:
    rows: list[str] = []
    for r in results:
        if r["row"] not in rows:
            rows.append(r["row"])
    return rows, sorted({int(r["bits"]) for r in results})


def table(results: list[dict], key: str, fmt: str = "{:.4f}", title: str | None = None) -> str:
    """A Markdown table of `key` (a metric name, or a function of a result) by row and code length."""
    rows, bits = _rows_and_bits(results)
    cell = {(r["row"], int(r["bits"])): r for r in results}
    get = key if callable(key) else (lambda r: r.get(key))
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| method | " + " | ".join(f"{b} bits" for b in bits) + " |")
    lines.append("|---|" + "---:|" * len(bits))
    for row in rows:
        values = []
        for b in bits:
            r = cell.get((row, b))
            v = get(r) if r is not None else None
            values.append("" if v is None else fmt.format(v))
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def describe_setting(results: list[dict]) -> str:
    r = results[0]
    top = "ALL" if r.get("topk") in (None, 0) else r["topk"]
    backbones = ", ".join(dict.fromkeys(x["backbone"] for x in results))
    return (f"dataset {r['dataset']} ({r['protocol']} protocol: {r['num_queries']} queries, "
            f"{r['num_database']} database items), backbone {backbones}, metric mAP@{top}")


def markdown_report(results: list[dict], title: str, notes: str = "") -> str:
    top = results[0].get("topk")
    top = "ALL" if top in (None, 0) else top
    parts = [
        f"# {title}",
        "",
        describe_setting(results),
        "",
        table(results, "mAP", title=f"mAP@{top} (ties broken by database index)"),
        "",
        table(results, "mAP_tie_aware", title=f"tie-aware mAP@{top}"),
        "",
        table(results, "precision_hamming2", title="P@H<=2"),
        "",
        table(results, lambda r: r.get("train_seconds"), fmt="{:.0f}", title="training time (s)"),
        "",
    ]
    if notes:
        parts += [notes, ""]
    return "\n".join(parts)


def write_report(results: list[dict], out_dir: Path, title: str, notes: str = "") -> Path:

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    atomic_write_text(path, markdown_report(results, title, notes))
    _, bits = _rows_and_bits(results)
    for b in bits:
        at_b = [r for r in results if int(r["bits"]) == b]
        plot_pr(at_b, out_dir / f"pr_{b}bits.png", title=f"PR curves, {b} bits")
        plot_pn(at_b, out_dir / f"pn_{b}bits.png", title=f"P@N, {b} bits")
    plot_h2(results, out_dir / "p_h2.png")
    return path
