"""The papers' tables of a set of results: methods x dataset x bits, mean +- sd over seeds, the best of each
column in bold; as Markdown, HTML, LaTeX and CSV. And the paired comparison of a method with its ablation.

Paired test (choice): a two-sided paired t-test over the training seeds both rows were run with
(scipy.stats.ttest_rel on the per-seed values; seed s of a method and seed s of its ablation share the
data split, the initial weights of every common layer and the batch order, so their difference is the
effect of the switch plus what the switch does to the rest of the training's randomness). With 3 seeds the
test has 2 degrees of freedom: only large, consistent differences reach p < 0.05, and "cannot be told
apart" means just that, not "equal".
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass

from attnhash.evaluation.records import Cell, Results, setting_key

METRICS = {  # metric -> (title, format)
    "mAP": ("mAP@{top} (ties broken by database index)", "{:.4f}"),
    "mAP_tie_aware": ("tie-aware mAP@{top}", "{:.4f}"),
    "precision_hamming2": ("P@H<=2", "{:.4f}"),
    "train_seconds": ("training time (s)", "{:.0f}"),
}
LOWER_IS_BETTER = {"train_seconds"}
SIGNIFICANCE = 0.05


def top_label(results: Results) -> str:
    tops = {r.get("topk") for r in results.records()}
    return "/".join("ALL" if t in (None, 0) else str(t) for t in sorted(tops, key=lambda t: t or 0))


@dataclass
class Table:
    """One metric by row and (dataset, bits) column."""

    results: Results
    metric: str
    title: str
    fmt: str

    @classmethod
    def of(cls, results: Results, metric: str) -> "Table":
        title, fmt = METRICS.get(metric, (metric, "{:.4f}"))
        return cls(results, metric, title.format(top=top_label(results)), fmt)

    @property
    def columns(self) -> list[tuple[str, int]]:
        r = self.results
        return [(d, b) for d in r.datasets for b in r.bits if any(r.get(row, d, b) for row in r.rows)]

    def cell(self, row: str, column: tuple[str, int]) -> Cell | None:
        return self.results.get(row, *column)

    def text(self, cell: Cell | None) -> str:
        """'0.7435', or '0.7423 ± 0.0072' over several seeds, '' where the cell was not run."""
        if cell is None or cell.mean(self.metric) is None:
            return ""
        mean, sd = cell.mean(self.metric), cell.sd(self.metric)
        return self.fmt.format(mean) + ("" if sd is None else " ± " + self.fmt.format(sd))

    def best(self, column: tuple[str, int]) -> set[str]:
        """The rows with the best mean of a column, as displayed (ties are all best)."""
        shown = {}
        for row in self.results.rows:
            cell = self.cell(row, column)
            if cell is not None and cell.mean(self.metric) is not None:
                shown[row] = float(self.fmt.format(cell.mean(self.metric)))
        if len(shown) < 2:
            return set()
        pick = min if self.metric in LOWER_IS_BETTER else max
        target = pick(shown.values())
        return {row for row, v in shown.items() if v == target}

    def seeds_note(self) -> str:
        n = self.results.max_seeds
        return f"mean ± sd over up to {n} training seeds" if n > 1 else ""


# ----- renderers ---------------------------------------------------------------------------------------
def _header_groups(table: Table) -> list[tuple[str, int]]:
    """(dataset, number of its columns) in order."""
    groups: list[tuple[str, int]] = []
    for dataset, _ in table.columns:
        if groups and groups[-1][0] == dataset:
            groups[-1] = (dataset, groups[-1][1] + 1)
        else:
            groups.append((dataset, 1))
    return groups


def to_markdown(table: Table) -> str:
    cols = table.columns
    several = len(table.results.datasets) > 1
    head = [f"{d} {b} bits" if several else f"{b} bits" for d, b in cols]
    lines = [f"**{table.title}**" + (f" ({table.seeds_note()})" if table.seeds_note() else ""), "",
             "| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    best = {c: table.best(c) for c in cols}
    for row in table.results.rows:
        cells = []
        for c in cols:
            text = table.text(table.cell(row, c))
            cells.append(f"**{text}**" if text and row in best[c] else text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_html(table: Table) -> str:
    cols = table.columns
    best = {c: table.best(c) for c in cols}
    out = ["<table>", f"<caption>{html.escape(table.title)}"
           + (f" <span class=note>({html.escape(table.seeds_note())})</span>" if table.seeds_note() else "")
           + "</caption>", "<thead><tr><th rowspan=2>method</th>"]
    out += [f"<th colspan={n}>{html.escape(d)}</th>" for d, n in _header_groups(table)]
    out.append("</tr><tr>" + "".join(f"<th>{b} bits</th>" for _, b in cols) + "</tr></thead><tbody>")
    for row in table.results.rows:
        tds = []
        for c in cols:
            text = html.escape(table.text(table.cell(row, c)))
            tds.append(f"<td><b>{text}</b></td>" if text and row in best[c] else f"<td>{text}</td>")
        out.append(f"<tr><th>{html.escape(row)}</th>{''.join(tds)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table (\\usepackage{booktabs}); ± as $\\pm$."""
    cols = table.columns
    best = {c: table.best(c) for c in cols}
    lines = [r"\begin{table}[t]", r"\centering",
             r"\caption{" + latex_escape(table.title + (f" ({table.seeds_note()})" if table.seeds_note() else ""))
             + "}", r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule"]
    groups = _header_groups(table)
    lines.append(" & ".join(["method"] + [rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(d)}}}" for d, n in groups])
                 + r" \\")
    start, rules = 2, []
    for _, n in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    lines.append(" & ".join([""] + [f"{b} bits" for _, b in cols]) + r" \\")
    lines.append(r"\midrule")
    for row in table.results.rows:
        cells = []
        for c in cols:
            text = table.text(table.cell(row, c)).replace(" ± ", r" $\pm$ ")
            cells.append(rf"\textbf{{{text}}}" if text and row in best[c] else text)
        lines.append(" & ".join([latex_escape(row)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


CSV_METRICS = ("mAP", "mAP_tie_aware", "precision_hamming2", "train_seconds")


def to_csv(results: Results) -> str:
    """One line per cell: row, dataset, bits, seeds, then mean and sd of each metric (long format)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "dataset", "bits", "seeds"]
                    + [f"{m}_{stat}" for m in CSV_METRICS for stat in ("mean", "sd")])
    for row in results.rows:
        for dataset in results.datasets:
            for bits in results.bits:
                cell = results.get(row, dataset, bits)
                if cell is None:
                    continue
                values = []
                for m in CSV_METRICS:
                    for v in (cell.mean(m), cell.sd(m)):
                        values.append("" if v is None else repr(round(v, 6)))
                writer.writerow([row, dataset, bits, " ".join(map(str, cell.seeds))] + values)
    return buf.getvalue()


# ----- a method against its ablation -------------------------------------------------------------------
@dataclass
class Comparison:
    """Row `row` against row `against` in one (dataset, bits) over their common seeds."""

    row: str
    against: str
    dataset: str
    bits: int
    seeds: list[int]
    with_values: list[float]
    without_values: list[float]
    t: float | None
    p: float | None

    @property
    def diff(self) -> float:
        return sum(a - b for a, b in zip(self.with_values, self.without_values)) / len(self.seeds)

    @property
    def diff_sd(self) -> float | None:
        if len(self.seeds) < 2:
            return None
        d = [a - b for a, b in zip(self.with_values, self.without_values)]
        mean = sum(d) / len(d)
        return math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))

    @property
    def verdict(self) -> str:
        if len(self.seeds) < 2:
            return "one seed: no test"
        if self.p is None or math.isnan(self.p):
            return "identical on every seed" if self.diff == 0 else "no test (constant difference)"
        if self.p < SIGNIFICANCE:
            return "helps" if self.diff > 0 else "hurts"
        return "cannot be told apart"


def paired_tests(results: Results, pairs: list[tuple[str, str]], metric: str = "mAP") -> list[Comparison]:
    """Each (row, against) pair in every (dataset, bits) both have, over their common seeds."""
    from scipy import stats  # only the reports with comparisons need it

    out = []
    for row, against in pairs:
        for dataset in results.datasets:
            for bits in results.bits:
                a, b = results.get(row, dataset, bits), results.get(against, dataset, bits)
                if a is None or b is None:
                    continue
                va, vb = a.values(metric), b.values(metric)
                seeds = sorted(set(va) & set(vb))
                if not seeds:
                    continue
                xs, ys = [va[s] for s in seeds], [vb[s] for s in seeds]
                t = p = None
                if len(seeds) > 1 and any(x != y for x, y in zip(xs, ys)):
                    res = stats.ttest_rel(xs, ys)
                    t, p = float(res.statistic), float(res.pvalue)
                out.append(Comparison(row, against, dataset, bits, seeds, xs, ys, t, p))
    return out


def ablation_pairs(results: Results) -> list[tuple[str, str]]:
    """(row, its ablation) for rows whose records differ from another row's only by method.ablate (and the
    seed): e.g. "dpfah" and "dpfah w/o attention"."""
    keys: dict[str, set[str]] = {}
    ablated: dict[str, bool] = {}
    for cell in results.cells.values():
        for r in cell.records.values():
            if not r.get("config"):
                continue  # a record without its config cannot be matched
            keys.setdefault(cell.row, set()).add(setting_key(r, ("method.ablate", "train.seed", "model.bits")))
            ablated[cell.row] = bool(r.get("ablate") or (r.get("config") or {}).get("method", {}).get("ablate"))
    pairs = []
    for row in results.rows:
        if ablated.get(row):
            continue
        for other in results.rows:
            if other != row and ablated.get(other) and keys.get(row, set()) & keys.get(other, set()):
                pairs.append((row, other))
    return pairs


def comparisons_markdown(comparisons: list[Comparison], metric: str = "mAP") -> str:
    lines = [f"**{metric}: each method against its ablation (paired t-test over the common seeds, two-sided)**", "",
             "| method | against | dataset | bits | seeds | with (mean ± sd) | without (mean ± sd) | difference "
             "(mean ± sd) | t | p | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in comparisons:
        lines.append("| " + " | ".join(_comparison_cells(c)) + " |")
    return "\n".join(lines)


def comparisons_html(comparisons: list[Comparison], metric: str = "mAP") -> str:
    head = ["method", "against", "dataset", "bits", "seeds", "with (mean ± sd)", "without (mean ± sd)",
            "difference (mean ± sd)", "t", "p", "verdict"]
    out = ["<table>", f"<caption>{html.escape(metric)}: each method against its ablation (paired t-test over the "
           "common seeds, two-sided)</caption>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
           + "</tr></thead><tbody>"]
    text_columns = {0, 1, 2, 10}
    for c in comparisons:
        cells = [html.escape(x) for x in _comparison_cells(c)]
        if c.verdict in ("helps", "hurts"):
            cells[-1] = f"<b>{cells[-1]}</b>"
        out.append("<tr>" + "".join(f"<td class=text>{x}</td>" if i in text_columns else f"<td>{x}</td>"
                                    for i, x in enumerate(cells)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {sd:.4f}"


def _comparison_cells(c: Comparison) -> list[str]:
    sd = c.diff_sd
    diff = f"{c.diff:+.4f}" + ("" if sd is None else f" ± {sd:.4f}")
    return [c.row, c.against, c.dataset, str(c.bits), str(len(c.seeds)), _mean_sd(c.with_values),
            _mean_sd(c.without_values), diff, "" if c.t is None else f"{c.t:.2f}",
            "" if c.p is None else f"{c.p:.3f}", c.verdict]
