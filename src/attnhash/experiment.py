"""Experiment grids: methods x code lengths x variants, trained and evaluated, reported as the papers' tables.

A grid file (YAML):

    name: table3-fmnist
    out: benchmarks/results/table3          # results.json, the report and its figures go here
    runs: benchmarks/runs/fmnist            # run folders (default: <out>/runs); grids with the same base can
                                            # share one, so a row they have in common is trained once
    base:                                   # a config layer applied to every run (same keys as --config)
      data: {dataset: fmnist, protocol: fmnist, image_size: 64}
      model: {backbone: efficientnet_lite0, freeze: block5, output_stride: 16}
      train: {epochs: 8, frozen_cache: disk}
    bits: [16, 32, 48, 64]
    seeds: [0, 1, 2]                        # optional: every run once per training seed (train.seed)
    rows:                                   # one table row each; every row is run at every code length
      - {method: dpsh}
      - {method: dpfah}
      - {method: dpfah, ablate: [attention], label: "dpfah w/o attention"}
      - {method: uhga, bits: [16, 32, 64, 128], seeds: [0], set: ["train.epochs=4"]}
    compare:                                # optional: pairs of rows the report tests against each other
      - {row: dpfah, against: "dpfah w/o attention"}

A run of seed s is named "<row>-<bits>b-s<s>", except the base's own seed (train.seed, 0 by default), which keeps
"<row>-<bits>b": the same run as in the grids that share the folder.

Runs whose folder already holds a metrics.json made by the same config are skipped, a run killed while it
trained continues from its last finished epoch (to the weights an uninterrupted run reaches), and one killed
while it was evaluated is only evaluated, so an interrupted grid resumes where it stopped. results.json keeps
every finished run's metrics with its config, and stands in for run folders that are gone.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from attnhash.atomic import atomic_write_text
from attnhash.config import RunConfig, build_config, config_from_dict, load_yaml
from attnhash.errors import AttnHashError, ConfigError
from attnhash.evaluation.run import evaluate_run
from attnhash.runs import RunFolder
from attnhash.training import resume_run, train


@dataclass
class GridRun:
    row: str  # the table row label
    method: str
    bits: int
    name: str  # run folder name
    overrides: list[str] = field(default_factory=list)
    ablate: list[str] = field(default_factory=list)
    seed: int | None = None  # the training seed the grid gives it (None: the base's)


@dataclass
class Grid:
    name: str
    out: Path
    runs_dir: Path
    base: dict
    runs: list[GridRun]
    source: str
    compare: list[tuple[str, str]] = field(default_factory=list)  # (row, against) pairs for paired tests
    description: str = ""
    base_on_disk: str | None = field(default=None, repr=False)  # the base.yaml text known to be on disk


def _row_label(row: dict) -> str:
    if row.get("label"):
        return str(row["label"])
    ablate = row.get("ablate") or []
    return row["method"] + (f" w/o {'+'.join(ablate)}" if ablate else "")


def load_grid(path: str | Path, out: str | Path | None = None) -> Grid:
    spec = load_yaml(path)
    unknown = set(spec) - {"name", "out", "runs", "base", "bits", "seeds", "rows", "compare", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    rows = spec.get("rows")
    if not rows or not isinstance(rows, list):
        raise ConfigError(f"{path}: 'rows' must be a non-empty list of {{method: ...}} entries")
    default_bits = spec.get("bits", [64])
    default_seeds = _seeds(spec.get("seeds"), path, "seeds")
    base_seed = int(((spec.get("base") or {}).get("train") or {}).get("seed", 0))
    runs: list[GridRun] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "method" not in row:
            raise ConfigError(f"{path}: row {i + 1} needs a 'method'")
        extra = set(row) - {"method", "bits", "seeds", "ablate", "set", "label"}
        if extra:
            raise ConfigError(f"{path}: row {i + 1}: unknown key(s) {', '.join(sorted(extra))}")
        label = _row_label(row)
        ablate = list(row.get("ablate") or [])
        slug = label.replace(" w/o ", "-no-").replace("+", "-").replace(" ", "_").replace("/", "_")
        seeds = _seeds(row["seeds"], path, f"row {i + 1}: seeds") if "seeds" in row else default_seeds
        for bits in row.get("bits", default_bits):
            for seed in seeds:
                # the base's own seed keeps the plain name: the same run as in the grids sharing the folder
                suffix = "" if seed is None or seed == base_seed else f"-s{seed}"
                seed_set = [] if seed is None else [f"train.seed={seed}"]
                runs.append(GridRun(row=label, method=row["method"], bits=int(bits), name=f"{slug}-{bits}b{suffix}",
                                    overrides=list(row.get("set") or []) + seed_set, ablate=ablate, seed=seed))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two rows make the same run; give them distinct labels")
    labels = {r.row for r in runs}
    compare = []
    for j, pair in enumerate(spec.get("compare") or []):
        if not isinstance(pair, dict) or set(pair) != {"row", "against"}:
            raise ConfigError(f"{path}: compare entry {j + 1} must be {{row: ..., against: ...}}")
        for key in ("row", "against"):
            if pair[key] not in labels:
                raise ConfigError(f"{path}: compare entry {j + 1}: no row labelled {pair[key]!r}")
        compare.append((str(pair["row"]), str(pair["against"])))
    out_dir = Path(out or spec.get("out") or Path("runs") / spec.get("name", Path(path).stem))
    runs_dir = Path(spec["runs"]) if spec.get("runs") and not out else out_dir / "runs"
    return Grid(name=spec.get("name", Path(path).stem), out=out_dir, runs_dir=runs_dir, base=spec.get("base") or {},
                runs=runs, source=str(path), compare=compare, description=" ".join(str(spec.get("description") or "").split()))


def _seeds(value, path, what: str) -> list[int | None]:
    """A list of training seeds (None: the base's own seed, one run)."""
    if value is None:
        return [None]
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and s >= 0 for s in value) \
            or len(set(value)) != len(value):
        raise ConfigError(f"{path}: {what} must be a list of distinct non-negative integers, got {value!r}")
    return list(value)


class GridRunsFailed(AttnHashError):
    """Runs of a grid failed (under keep_going, or in the processes of `attnhash experiment --jobs`); the others
    were trained, and `results` holds every finished run."""

    def __init__(self, failures: list[tuple[str, str]], results: list[dict]):
        self.failures, self.results = failures, results
        listed = "; ".join(f"{name} ({why})" for name, why in failures)
        super().__init__(f"{len(failures)} run(s) of the grid failed: {listed}")


def run_config(grid: Grid, run: GridRun, extra_overrides: list[str] | None = None) -> RunConfig:
    base_file = grid.out / "base.yaml"
    text = yaml.safe_dump(grid.base, sort_keys=False)
    # two processes may run parts of one grid at once: the file each reads is whole, and rewritten only on change;
    # looked at once per grid and base, not once per run (finished_results asks for every run's config)
    if grid.base_on_disk != text:
        if not base_file.is_file() or base_file.read_text() != text:
            grid.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(base_file, text)
        grid.base_on_disk = text
    overrides = [f"model.bits={run.bits}", f"method.ablate={json.dumps(run.ablate)}", f"name={run.name}",
                 f"out_dir={grid.runs_dir}", *run.overrides, *(extra_overrides or [])]
    return build_config(run.method, [str(base_file)], None, overrides)


def selected(grid: Grid, only: str | list[str] | None = None, seeds: list[int] | None = None,
             names: list[str] | None = None) -> list[GridRun]:
    """The grid's runs whose name contains one of the texts `only` (all when None), whose training seed is
    one of `seeds` (all when None; a run without a seed of its own has the base's), and whose name is one of
    `names` (all when None)."""
    texts = [only] if isinstance(only, str) else only
    base_seed = int(((grid.base or {}).get("train") or {}).get("seed", 0))
    if names is not None and (unknown := set(names) - {r.name for r in grid.runs}):
        raise ConfigError(f"{grid.source}: no run named {', '.join(sorted(unknown))}")
    return [r for r in grid.runs
            if (not texts or any(t in r.name for t in texts))
            and (seeds is None or (base_seed if r.seed is None else r.seed) in seeds)
            and (names is None or r.name in names)]


def pending_runs(grid: Grid, extra_overrides: list[str] | None = None, only: str | list[str] | None = None,
                 seeds: list[int] | None = None, retrain: bool = False) -> list[GridRun]:
    """The selected runs that run_grid would train: every one with `retrain`, else those not finished."""
    todo = selected(grid, only, seeds)
    if retrain:
        return todo
    recorded = _recorded_results(grid)
    return [run for run in todo
            if _finished_result(grid, run, _config_dict(run_config(grid, run, extra_overrides)), recorded) is None]


def run_grid(grid: Grid, extra_overrides: list[str] | None = None, progress: bool = True, log=print,
             only: str | list[str] | None = None, retrain: bool = False, seeds: list[int] | None = None,
             keep_going: bool = False, names: list[str] | None = None) -> list[dict]:
    """Train and evaluate the grid's runs (those `selected` by `only`, `seeds` and `names`), skipping finished ones
    unless `retrain` (e.g. a run whose time was measured on a busy machine); returns the results of every
    finished run of the grid, so a partial grid still reports.

    A run that fails stops the grid, unless `keep_going`: then the failure is logged in one line (with the
    traceback when it is not a user-facing error), the next runs go on, and at the end GridRunsFailed names
    the failed runs and carries the results of the finished ones."""
    todo = selected(grid, only, seeds, names)
    recorded = _recorded_results(grid)
    failures: list[tuple[str, str]] = []
    for k, run in enumerate(todo, 1):
        cfg = run_config(grid, run, extra_overrides)
        config = _config_dict(cfg)
        result = None if retrain else _finished_result(grid, run, config, recorded)
        if result is not None:
            log(f"[{k}/{len(todo)}] {run.name}: done before, mAP {result['mAP']:.4f}")
            continue
        t0 = time.time()
        run_dir = grid.runs_dir / run.name
        folder = RunFolder(run_dir)
        # an earlier training's metrics must never be read as those of the weights being trained now
        folder.forget_metrics()
        unfinished = folder.file(RunFolder.TRAIN_STATE).exists()
        resume = not retrain and unfinished and _as_current(folder.saved_config()) == config
        # killed while it was evaluated: its model is this config's (the checkpoint's own config says so)
        trained = not retrain and not unfinished and folder.has_model() and _model_config(folder) == config
        doing = "evaluating its trained model" if trained else "resuming its training" if resume else "training"
        log(f"[{k}/{len(todo)}] {run.name}: {doing}")
        try:
            if resume:  # killed mid-training with this config: go on from its last finished epoch, same weights
                resume_run(run_dir, progress=progress, log=lambda m: log(f"    {m}"))
            elif not trained:
                train(cfg, run_dir=run_dir, progress=progress, log=lambda m: log(f"    {m}"), force=True)
            _, result = evaluate_run(run_dir, progress=progress, plots=False)
        except Exception as err:
            if not keep_going:
                raise
            why = f"{type(err).__name__}: {err}"
            failures.append((run.name, why))
            log(f"[{k}/{len(todo)}] {run.name}: FAILED after {time.time() - t0:.0f}s: {why}")
            if not isinstance(err, AttnHashError):  # a bug, not bad input: keep where it happened
                log(traceback.format_exc().rstrip())
            continue
        log(f"[{k}/{len(todo)}] {run.name}: mAP {result['mAP']:.4f} in {time.time() - t0:.0f}s")
        write_results(grid, finished_results(grid, extra_overrides))
    results = finished_results(grid, extra_overrides)
    write_results(grid, results)
    if failures:
        raise GridRunsFailed(failures, results)
    return results


def finished_results(grid: Grid, extra_overrides: list[str] | None = None) -> list[dict]:
    """The metrics, with the config, of every run of the grid already trained and evaluated with the grid's
    current config."""
    results = []
    recorded = _recorded_results(grid)
    for run in grid.runs:
        config = _config_dict(run_config(grid, run, extra_overrides))
        result = _finished_result(grid, run, config, recorded)
        if result is not None:
            result.update(row=run.row, config=config)
            results.append(result)
    return results


def _finished_result(grid: Grid, run: GridRun, config: dict, recorded: dict[str, dict]) -> dict | None:
    """The run's metrics if it was made with `config`: from its folder, or else from its record in the
    grid's results.json, which carries each run's full config. Run folders are big and not kept with the
    results, so a report can then be rebuilt anywhere, and a partial rerun never drops the rows it did not
    retrain."""
    folder = RunFolder(grid.runs_dir / run.name)
    metrics = folder.load_metrics()
    if metrics is not None and _as_current(folder.saved_config()) == config:
        return metrics
    record = recorded.get(run.name)
    return record if record is not None and _as_current(record.get("config")) == config else None


def _model_config(folder: RunFolder) -> dict | None:
    """The config saved inside the folder's checkpoint (None when it cannot be read)."""
    try:
        return _config_dict(folder.load_model().config)
    except AttnHashError:
        return None


def _as_current(saved: dict | None) -> dict | None:
    """A recorded config as this version writes it: keys added since take their defaults, which keep the
    behaviour of the version that made the record (a record stays valid until a setting it used changes)."""
    if not isinstance(saved, dict):
        return None
    try:
        return _config_dict(config_from_dict(saved))
    except ConfigError:
        return None


def _config_dict(cfg: RunConfig) -> dict:
    return yaml.safe_load(cfg.to_yaml())


def _recorded_results(grid: Grid) -> dict[str, dict]:
    """The records of the grid's results.json by run name."""
    path = grid.out / "results.json"
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); move it away to rebuild it from the run folders") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "run" in r for r in records):
        raise ConfigError(f"{path}: expected a list of run records")
    return {Path(r["run"]).name: r for r in records}


def write_results(grid: Grid, results: list[dict]) -> None:
    """results.json: the records of the grid's finished runs (finished_results), written atomically. Processes
    running parts of one grid each write it as they finish a run, so the last to write may have missed another's
    run; rewritten from the run folders, it holds them all again."""
    atomic_write_text(grid.out / "results.json", json.dumps(results, indent=1))
