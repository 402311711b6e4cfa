"""The papers' tables and the HTML report: from committed records alone, with seeds and a paired test, and
with run folders (training curves, t-SNE, top-10 grids, attention maps)."""

import copy
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnhash.cli import main
from attnhash.evaluation.records import group, records_from_path, setting_key
from attnhash.evaluation.tables import Table, ablation_pairs, paired_tests, to_csv, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[2]
TABLE3 = ROOT / "benchmarks" / "results" / "table3_attention"


def images_in(page: str) -> list[str]:
    """The captions of the page's embedded PNG figures."""
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}">', page)
    return [html.unescape(c) for c in found]


def test_report_from_committed_records_alone(tmp_path):
    out = tmp_path / "t3" / "report.html"
    proc = subprocess.run([sys.executable, "-m", "attnhash", "report", str(TABLE3), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out), str(out.with_suffix(".csv")), str(out.with_suffix(".tex"))]
    page = out.read_text()
    captions = images_in(page)
    for wanted in ("mAP against code length", "P@H<=2 against code length", "Precision-recall curves",
                   "Precision of the top N"):
        assert any(c.startswith(wanted) for c in captions), wanted
    # the paper's layout: a row per method, a column per code length, the best of each column in bold
    assert "<th>dpfah w/o attention</th>" in page and "<th>128 bits</th>" in page
    assert "<td><b>0.7622</b></td>" in page  # dpfah's 64-bit mAP, the best of that column
    assert "run folders" in page  # says what it could not draw without them
    assert "\\textbf{0.7622}" in out.with_suffix(".tex").read_text()
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,dataset,bits,seeds,mAP_mean,mAP_sd")
    assert any(line.startswith("dpfah,fmnist,64,0,0.762") for line in csv_lines)


def seeded_records() -> list[dict]:
    """Three seeds of dpfah and of its ablation at 32 bits, from the committed seed-0 records."""
    base = [r for r in records_from_path(TABLE3) if r["row"] in ("dpfah", "dpfah w/o attention") and r["bits"] == 32]
    out = []
    shifts = {"dpfah": [0.0, 0.004, 0.002], "dpfah w/o attention": [0.0, -0.003, 0.001]}
    for r in base:
        for seed, shift in enumerate(shifts[r["row"]]):
            x = copy.deepcopy(r)
            x["config"]["train"]["seed"] = seed
            x["row"] = r["row"] + (f" seed {seed}" if seed else "")  # as the seed grids label them
            x["mAP"] += shift
            out.append(x)
    return out


def test_seeds_give_mean_and_sd_and_a_paired_test():
    from scipy import stats

    results = group(seeded_records())
    assert results.rows == ["dpfah", "dpfah w/o attention"] and results.max_seeds == 3
    md = to_markdown(Table.of(results, "mAP"))
    cell = results.get("dpfah w/o attention", "fmnist", 32)  # the better mean of the column: bold
    assert f"| **{cell.mean('mAP'):.4f} ± {cell.sd('mAP'):.4f}** |" in md and "| dpfah | 0.7658 ± 0.0020 |" in md
    assert "mean ± sd over up to 3 training seeds" in md
    pairs = ablation_pairs(results)
    assert pairs == [("dpfah", "dpfah w/o attention")]
    (c,) = paired_tests(results, pairs)
    a = [0.7638, 0.7678, 0.7658]
    b = [0.7670, 0.7640, 0.7680]
    expected = stats.ttest_rel(a, b)
    assert c.seeds == [0, 1, 2] and c.p == pytest.approx(expected.pvalue, abs=2e-3)
    assert c.verdict == "cannot be told apart"
    assert "cannot be told apart" in json.dumps(c.__dict__ | {"verdict": c.verdict})


def test_a_consistent_difference_over_seeds_is_a_verdict():
    results = group(seeded_records())
    for seed, r in results.get("dpfah", "fmnist", 32).records.items():
        r["mAP"] = 0.80 + 0.001 * seed
    (c,) = paired_tests(results, [("dpfah", "dpfah w/o attention")])
    assert c.verdict == "helps" and c.p < 0.05 and c.diff > 0


def test_setting_key_drops_nested_keys():
    (a,) = [r for r in records_from_path(TABLE3) if r["row"] == "dpfah" and r["bits"] == 32]
    b = copy.deepcopy(a)
    b["config"]["method"]["params"]["alpha"] = 0.5  # a sweep's change, three levels deep
    assert setting_key(a) != setting_key(b)
    assert setting_key(a, ("method.params.alpha",)) == setting_key(b, ("method.params.alpha",))
    assert setting_key(a, ("method.params.beta",)) != setting_key(b, ("method.params.beta",))
    assert setting_key(a, ("no.such.key", "method.params.alpha.deeper")) == setting_key(a)


def test_latex_and_csv_escape_and_keep_every_cell():
    records = [r for r in records_from_path(TABLE3) if r["bits"] in (16, 128)]
    for r in records:
        r["row"] = r["row"].replace("w/o", "w/o_x&y")
    tex = to_latex(Table.of(group(records), "mAP"))
    assert r"w/o\_x\&y" in tex and tex.count(r"\\") >= len(group(records).rows) + 2
    csv = to_csv(group(records))
    assert len(csv.splitlines()) == 1 + len(records)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "nothing-here: not a grid" in err and "Traceback" not in err
    (tmp_path / "results.json").write_text("{not json")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


TINY_BASE = {
    "data": {"dataset": "fmnist", "protocol": "fmnist", "image_size": 64, "train_limit": 96,
             "query_limit": 20, "database_limit": 150},
    "model": {"backbone": "resnet18", "weights": "none", "freeze": "layer3", "output_stride": 16},
    "train": {"epochs": 1, "batch_size": 32, "frozen_cache": "off", "seed": 0},
}


def test_report_with_run_folders_draws_every_figure(tmp_path, fmnist):
    spec = {"name": "tiny study", "out": str(tmp_path / "out"), "runs": str(tmp_path / "runs"), "base": TINY_BASE,
            "bits": [16], "seeds": [0, 1],
            "rows": [{"method": "dpfah"}, {"method": "dpfah", "ablate": ["attention"]}],
            "compare": [{"row": "dpfah", "against": "dpfah w/o attention"}]}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["experiment", str(grid), "-q"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(grid), "--out", str(out), "-q"]) == 0
    page = out.read_text()
    captions = images_in(page)
    for wanted in ("training loss per epoch", "database items per run", "dpfah: top 10", "Attention maps"):
        assert any(wanted in c for c in captions), (wanted, captions)
    assert "Not drawn" not in page
    # the comparison named by the grid, with its two seeds and a test
    assert ("<td class=text>dpfah</td><td class=text>dpfah w/o attention</td><td class=text>fmnist</td>"
            "<td>16</td><td>2</td>") in page
    assert " ± " in page

    # a run folder trained again since its record holds another model: the report does not use it
    from attnhash.evaluation.records import run_folder

    record = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    assert run_folder(record) is not None
    assert run_folder({**record, "fingerprint": "0" * len(record["fingerprint"])}) is None
