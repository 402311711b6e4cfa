"""Experiment grids: runs are named per row and code length, finished runs are reused, partial grids report."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from attnhash.errors import ConfigError
from attnhash.experiment import GridRunsFailed, finished_results, load_grid, run_grid

# Real Fashion-MNIST, but a few hundred images and one epoch of an untrained ResNet18: seconds per run.
TINY_BASE = {
    "data": {"dataset": "fmnist", "protocol": "fmnist", "image_size": 32, "train_limit": 128,
             "query_limit": 20, "database_limit": 200},
    "model": {"backbone": "resnet18", "weights": "none"},
    "train": {"epochs": 1, "batch_size": 32, "frozen_cache": "off", "seed": 0},
}


def write_grid(tmp_path, rows, bits=(16,), base=TINY_BASE):
    spec = {"name": "tiny grid", "out": str(tmp_path / "out"), "runs": str(tmp_path / "runs"),
            "base": base, "bits": list(bits), "rows": rows}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_runs_are_named_by_row_and_code_length(tmp_path):
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dpfah", "ablate": ["attention"]},
                                           {"method": "uhga", "bits": [128], "label": "uhga long"}], bits=(16, 32)))
    assert [(r.row, r.name) for r in grid.runs] == [
        ("dpsh", "dpsh-16b"), ("dpsh", "dpsh-32b"),
        ("dpfah w/o attention", "dpfah-no-attention-16b"), ("dpfah w/o attention", "dpfah-no-attention-32b"),
        ("uhga long", "uhga_long-128b")]


def test_seeds_make_one_run_each_and_the_base_seed_keeps_the_plain_name(tmp_path):
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dsh", "seeds": [0]}]))
    assert [r.name for r in grid.runs] == ["dpsh-16b", "dsh-16b"]
    spec = yaml.safe_load((tmp_path / "grid.yaml").read_text())
    spec.update(seeds=[0, 1, 2], compare=[{"row": "dpsh", "against": "dsh"}])
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec))
    grid = load_grid(tmp_path / "grid.yaml")
    assert [(r.row, r.name) for r in grid.runs] == [
        ("dpsh", "dpsh-16b"), ("dpsh", "dpsh-16b-s1"), ("dpsh", "dpsh-16b-s2"), ("dsh", "dsh-16b")]
    assert grid.runs[1].overrides[-1] == "train.seed=1" and grid.compare == [("dpsh", "dsh")]
    from attnhash.experiment import run_config

    assert run_config(grid, grid.runs[2]).train.seed == 2 and run_config(grid, grid.runs[0]).train.seed == 0

    from attnhash.experiment import selected

    assert [r.name for r in selected(grid, ["dpsh-16b"], [0, 2])] == ["dpsh-16b", "dpsh-16b-s2"]
    assert [r.name for r in selected(grid, ["dpsh-16b-s1", "dsh"])] == ["dpsh-16b-s1", "dsh-16b"]
    assert len(selected(grid)) == 4 and selected(grid, seeds=[5]) == []


def test_the_attention_study_grid_pairs_each_method_with_its_ablation(tmp_path):
    from pathlib import Path

    grid = load_grid(Path(__file__).parents[1] / "benchmarks" / "grids" / "attention_study.yaml", out=tmp_path)
    rows = {r.row for r in grid.runs}
    assert all(a in rows and b in rows for a, b in grid.compare)
    seeded = [r for r in grid.runs if r.row in {a for pair in grid.compare for a in pair}]
    assert {r.seed for r in seeded} == {0, 1, 2} and {r.bits for r in seeded} == {32, 64}
    from attnhash.experiment import run_config

    sizes = {run_config(grid, r).data.image_size for r in seeded}
    assert sizes == {64, 96}  # last feature maps of 4x4 and 6x6 at output stride 16


@pytest.mark.parametrize("spec, message", [
    ({"rows": [{"method": "dpsh"}], "colour": "red"}, "unknown key(s) colour"),
    ({"rows": [{"method": "dpsh"}], "seeds": [1, 1]}, "seeds must be a list of distinct"),
    ({"rows": [{"method": "dpsh", "seeds": "all"}]}, "row 1: seeds must be"),
    ({"rows": [{"method": "dpsh"}], "compare": [{"row": "dpsh", "against": "dsh"}]}, "no row labelled 'dsh'"),
    ({"rows": []}, "'rows' must be a non-empty list"),
    ({"rows": [{"bits": [16]}]}, "row 1 needs a 'method'"),
    ({"rows": [{"method": "dpsh"}, {"method": "dpsh"}]}, "two rows make the same run"),
])
def test_bad_grids_are_refused_by_name(tmp_path, spec, message):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="grid.yaml") as err:
        load_grid(path)
    assert message in str(err.value)


def test_partial_grid_reports_and_resumes(tmp_path, fmnist):
    path = write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dsh"}])
    grid = load_grid(path)
    logs = []
    results = run_grid(grid, progress=False, log=logs.append, only="dsh-")
    assert [(r["row"], r["bits"]) for r in results] == [("dsh", 16)]
    assert (tmp_path / "runs" / "dsh-16b" / "metrics.json").exists()
    assert not (tmp_path / "runs" / "dpsh-16b").exists()

    # the whole grid: the finished run is reused, the other trained, both reported
    logs.clear()
    results = run_grid(grid, progress=False, log=logs.append)
    assert [r["row"] for r in results] == ["dpsh", "dsh"]
    assert any("dsh-16b: done before" in m for m in logs)
    assert any("dpsh-16b: training" in m for m in logs)

    # a changed config makes a run unfinished again, so a report never mixes settings
    assert len(finished_results(grid)) == 2
    assert finished_results(grid, ["train.epochs=2"]) == []

    proc = subprocess.run([sys.executable, "-m", "attnhash", "experiment", str(path), "--report-only"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| dpsh |" in report and "| dsh |" in report
    assert (tmp_path / "out" / "pr.png").exists() and "![PR curves, fmnist](pr.png)" in report

    # --retrain trains the selected finished runs again, and only those
    before = (tmp_path / "runs" / "dsh-16b" / "meta.json").stat().st_mtime_ns
    logs.clear()
    results = run_grid(grid, progress=False, log=logs.append, only="dsh-", retrain=True)
    assert any("dsh-16b: training" in m for m in logs) and not any("dpsh-16b" in m for m in logs)
    assert (tmp_path / "runs" / "dsh-16b" / "meta.json").stat().st_mtime_ns != before
    assert [r["row"] for r in results] == ["dpsh", "dsh"]


def test_results_json_stands_in_for_run_folders_that_are_gone(tmp_path, fmnist):
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dsh"}]))
    first = run_grid(grid, progress=False, log=lambda m: None)
    assert all(r["config"]["model"]["bits"] == 16 for r in first)
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: run folders are not kept, results.json is

    logs = []
    again = run_grid(grid, progress=False, log=logs.append)
    assert [r["mAP"] for r in again] == [r["mAP"] for r in first]
    assert sum("done before" in m for m in logs) == 2 and not any("training" in m for m in logs)

    # a record made with another config is not this grid's result: only that run is trained again
    results_file = tmp_path / "out" / "results.json"
    records = json.loads(results_file.read_text())
    records[1]["config"]["train"]["epochs"] = 5
    results_file.write_text(json.dumps(records))
    logs.clear()
    run_grid(grid, progress=False, log=logs.append)
    assert any("dsh-16b: training" in m for m in logs) and any("dpsh-16b: done before" in m for m in logs)
    assert [r["row"] for r in json.loads(results_file.read_text())] == ["dpsh", "dsh"]

    results_file.write_text("{not json")
    with pytest.raises(ConfigError, match="results.json: not valid JSON"):
        finished_results(grid)


def test_report_only_with_nothing_finished_is_a_clear_error(tmp_path):
    path = write_grid(tmp_path, [{"method": "dpsh"}])
    proc = subprocess.run([sys.executable, "-m", "attnhash", "experiment", str(path), "--report-only"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no finished run" in proc.stderr


def test_report_only_with_retrain_is_refused(tmp_path):
    path = write_grid(tmp_path, [{"method": "dpsh"}])
    proc = subprocess.run([sys.executable, "-m", "attnhash", "experiment", str(path), "--report-only",
                           "--retrain"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot be combined with --retrain" in proc.stderr


def test_keep_going_trains_the_other_runs_and_names_the_failed_ones(tmp_path, fmnist):
    # a value only the method checks, when its run starts: the grid loads, that run fails
    path = write_grid(tmp_path, [{"method": "dhida", "set": ["method.params.scale=-1.0"]}, {"method": "dpsh"}])
    grid = load_grid(path)
    with pytest.raises(ConfigError, match="scale must be positive"):
        run_grid(grid, progress=False, log=lambda m: None)
    assert not (tmp_path / "runs" / "dpsh-16b").exists()  # without keep_going the grid stops there

    logs = []
    with pytest.raises(GridRunsFailed) as caught:
        run_grid(grid, progress=False, log=logs.append, keep_going=True)
    assert [name for name, _ in caught.value.failures] == ["dhida-16b"]
    assert [r["row"] for r in caught.value.results] == ["dpsh"]
    assert any(m.startswith("[1/2] dhida-16b: FAILED") and "scale must be positive" in m for m in logs)
    assert not any("Traceback" in m for m in logs)  # bad input: its one line is enough
    assert [r["row"] for r in json.loads((tmp_path / "out" / "results.json").read_text())] == ["dpsh"]

    proc = subprocess.run([sys.executable, "-m", "attnhash", "experiment", str(path), "--keep-going", "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 run(s) of the grid failed: dhida-16b (ConfigError: dhida: scale must be positive" in proc.stderr
    assert "dpsh-16b: done before" in proc.stdout and "| dpsh |" in (tmp_path / "out" / "report.md").read_text()


def test_keep_going_keeps_the_traceback_of_an_unexpected_error(tmp_path, monkeypatch):
    import attnhash.experiment as experiment

    def broken_train(cfg, **kwargs):
        raise RuntimeError("boom in " + cfg.name)

    monkeypatch.setattr(experiment, "train", broken_train)
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dsh"}]))
    logs = []
    with pytest.raises(GridRunsFailed, match=r"2 run\(s\) of the grid failed: dpsh-16b \(RuntimeError: boom in "
                                             r"dpsh-16b\); dsh-16b") as caught:
        run_grid(grid, progress=False, log=logs.append, keep_going=True)
    assert caught.value.results == []
    assert sum("Traceback" in m and "broken_train" in m for m in logs) == 2


def test_the_grids_base_file_is_rewritten_only_when_it_changes(tmp_path):
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}, {"method": "dsh"}]))
    base_file = tmp_path / "out" / "base.yaml"
    finished_results(grid)
    written = base_file.stat().st_mtime_ns
    finished_results(grid)  # a second process reading the grid meanwhile sees the same, whole file
    assert base_file.stat().st_mtime_ns == written
    grid.base = {**grid.base, "train": {**grid.base["train"], "epochs": 2}}
    finished_results(grid)
    assert yaml.safe_load(base_file.read_text())["train"]["epochs"] == 2


def test_jobs_train_runs_in_processes_of_their_own(tmp_path, fmnist):
    path = write_grid(tmp_path, [{"method": "dhida", "set": ["method.params.scale=-1.0"]}, {"method": "dpsh"},
                                 {"method": "dsh"}])
    command = [sys.executable, "-m", "attnhash", "experiment", str(path), "--jobs", "2", "-q"]
    proc = subprocess.run(command, capture_output=True, text=True)
    # dhida and dpsh start together; dhida fails, so dsh is not started, and dpsh finishes
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("1 run(s) of the grid failed: dhida-16b (attnhash experiment: error: dhida: scale must be positive"
            in proc.stderr)
    assert "not started after the failure: dsh-16b" in proc.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # each process its share of the cores
    assert f"dpsh-16b: training ({threads} thread(s);" in proc.stdout and "dpsh-16b: mAP" in proc.stdout
    assert (tmp_path / "runs" / "dpsh-16b" / "metrics.json").exists() and not (tmp_path / "runs" / "dsh-16b").exists()
    assert "scale must be positive" in (tmp_path / "runs" / "dhida-16b" / "experiment.log").read_text()
    assert [r["row"] for r in json.loads((tmp_path / "out" / "results.json").read_text())] == ["dpsh"]

    proc = subprocess.run([*command, "--keep-going"], capture_output=True, text=True)
    assert proc.returncode == 1 and "not started" not in proc.stderr, proc.stderr
    assert "dsh-16b: mAP" in proc.stdout and "dpsh-16b" not in proc.stdout  # finished before: not started again
    assert [r["row"] for r in json.loads((tmp_path / "out" / "results.json").read_text())] == ["dpsh", "dsh"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| dpsh |" in report and "| dsh |" in report

    proc = subprocess.run([*command[:-3], "--jobs", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--jobs must be at least 1, got 0" in proc.stderr


def test_a_run_killed_while_it_trains_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, fmnist, monkeypatch):
    from safetensors.torch import load_file

    from attnhash.runs import RunFolder

    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 3}}
    grid = load_grid(write_grid(tmp_path, [{"method": "dpsh"}], base=base))
    run_grid(grid, progress=False, log=lambda m: None)
    model = tmp_path / "runs" / "dpsh-16b" / "model.safetensors"
    whole = load_file(model)
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "out" / "results.json").unlink()

    class Killed(Exception):
        pass

    saved = RunFolder.save_train_state

    def killed_after_the_second_epoch(self, state):
        saved(self, state)
        if state["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(RunFolder, "save_train_state", killed_after_the_second_epoch)
    with pytest.raises(Killed):
        run_grid(grid, progress=False, log=lambda m: None)
    monkeypatch.setattr(RunFolder, "save_train_state", saved)
    logs = []
    run_grid(grid, progress=False, log=logs.append)
    assert any("dpsh-16b: resuming its training" in m for m in logs)
    assert [json.loads(line)["epoch"] for line in (model.parent / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    resumed = load_file(model)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

    # killed while it was evaluated: the trained model is evaluated, not trained again
    (model.parent / "metrics.json").unlink()
    (tmp_path / "out" / "results.json").unlink()
    written = model.stat().st_mtime_ns
    logs.clear()
    run_grid(grid, progress=False, log=logs.append)
    assert any("dpsh-16b: evaluating its trained model" in m for m in logs) and model.stat().st_mtime_ns == written
    assert (model.parent / "metrics.json").exists()

    # another config is another training: from the start, and its own state is the only one resumed later
    logs.clear()
    run_grid(grid, ["train.epochs=2"], progress=False, log=logs.append)
    assert any("dpsh-16b: training" in m for m in logs) and not any("resuming" in m for m in logs)
