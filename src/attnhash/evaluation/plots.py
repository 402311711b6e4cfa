"""Figures of the papers: PR curves by Hamming radius, P@N curves, P@H<=2 per code length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def _label(result: dict) -> str:
    if result.get("row"):
        return f"{result['row']} {result['bits']}b"
    ablated = f" w/o {'+'.join(result['ablate'])}" if result.get("ablate") else ""
    return f"{result['method']}{ablated} {result['bits']}b"


def plot_pr(results: list[dict], path: Path, title: str = "Precision-recall by Hamming radius") -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        pr = r["pr_curve"]
        ax.plot(pr["recall"], pr["precision"], marker=".", markersize=3, label=_label(r))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pn(results: list[dict], path: Path, title: str = "Precision of the top N") -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        pn = {int(k): v for k, v in r["precision_at_n"].items()}
        ns = sorted(pn)
        ax.plot(ns, [pn[n] for n in ns], marker=".", label=_label(r))
    ax.set_xlabel("N (number of top results)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_h2(results: list[dict], path: Path, title: str = "Precision within Hamming radius 2") -> Path:
    """One line per method over code lengths, as the papers' P@H=2 figures."""
    by_method: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        name = r.get("row") or r["method"] + (f" w/o {'+'.join(r['ablate'])}" if r.get("ablate") else "")
        by_method.setdefault(name, []).append((r["bits"], r["precision_hamming2"]))
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, points in sorted(by_method.items()):
        points.sort()
        ax.plot([b for b, _ in points], [p for _, p in points], marker="o", label=name)
    ax.set_xlabel("bits")
    ax.set_ylabel("P@H<=2")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(result: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_pr([result], out_dir / "pr_curve.png"), plot_pn([result], out_dir / "precision_at_n.png")]
