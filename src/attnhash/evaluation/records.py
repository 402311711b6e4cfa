"""Evaluated runs as records, and records grouped into the cells of a paper's table.

A record is one evaluated run: the dict `evaluate_run` writes to a run's metrics.json and an experiment grid
keeps in its results.json (mAP, PR curve, P@N, P@H<=2, training time, ... with `row`, `bits`, `dataset` and the
run's full `config`). A cell is one (row, dataset, bits) of a table with the records of every training seed
it was run with; its values are reported as mean and sample sd over those seeds.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from attnhash.errors import ConfigError
from attnhash.runs import RunFolder

SEED_SUFFIX = re.compile(r"\s+seed\s+\d+$")  # rows "dpsh seed 1", "dpsh seed 2" of the seed grids are "dpsh"
IGNORED_IN_SETTING = ("name", "out_dir")  # config keys that do not change what a run is


def row_name(record: dict) -> str:
    """The table row of a record: its grid row (without a "seed N" suffix), or method (w/o ablations)."""
    row = record.get("row")
    if not row:
        ablate = record.get("ablate") or []
        row = record.get("method", "?") + (f" w/o {'+'.join(ablate)}" if ablate else "")
    return SEED_SUFFIX.sub("", str(row))


def seed_of(record: dict) -> int:
    return int(((record.get("config") or {}).get("train") or {}).get("seed", 0))


def dataset_of(record: dict) -> str:
    return str(record.get("dataset") or ((record.get("config") or {}).get("data") or {}).get("dataset") or "?")


def setting_key(record: dict, drop: tuple[str, ...] = ()) -> str:
    """The run's config without its name, folder and the dotted keys in `drop`, as canonical JSON: two records
    with the same key were made the same way except for those keys."""
    config = json.loads(json.dumps(record.get("config") or {}))
    for key in IGNORED_IN_SETTING + drop:
        *sections, leaf = key.split(".")
        holder = config
        for section in sections:  # nested: "method.params.alpha"
            holder = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(leaf, None)
    return json.dumps(config, sort_keys=True)


@dataclass
class Cell:
    """One (row, dataset, bits) of a table: the records of its seeds, by seed."""

    row: str
    dataset: str
    bits: int
    records: dict[int, dict] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.records)

    def values(self, metric: str) -> dict[int, float]:
        """metric by seed (seeds whose record lacks it are left out)."""
        out = {}
        for seed, r in self.records.items():
            v = r.get(metric)
            if isinstance(v, (int, float)):
                out[seed] = float(v)
        return out

    def mean(self, metric: str) -> float | None:
        v = list(self.values(metric).values())
        return statistics.fmean(v) if v else None

    def sd(self, metric: str) -> float | None:
        """Sample standard deviation over seeds (None with fewer than two)."""
        v = list(self.values(metric).values())
        return statistics.stdev(v) if len(v) > 1 else None

    def first(self) -> dict:
        return self.records[self.seeds[0]]


@dataclass
class Results:
    """Cells of a set of records, with the order of rows, datasets and code lengths as they appear."""

    cells: dict[tuple[str, str, int], Cell]
    rows: list[str]
    datasets: list[str]
    bits: list[int]

    def get(self, row: str, dataset: str, bits: int) -> Cell | None:
        return self.cells.get((row, dataset, bits))

    def records(self) -> list[dict]:
        return [r for c in self.cells.values() for r in c.records.values()]

    @property
    def max_seeds(self) -> int:
        return max((len(c.records) for c in self.cells.values()), default=0)


def group(records: list[dict]) -> Results:
    """Cells of the records. Two records of one cell and one seed are one run reported twice (the later wins)."""
    cells: dict[tuple[str, str, int], Cell] = {}
    rows: list[str] = []
    datasets: list[str] = []
    for r in records:
        row, dataset, bits = row_name(r), dataset_of(r), int(r["bits"])
        if row not in rows:
            rows.append(row)
        if dataset not in datasets:
            datasets.append(dataset)
        cell = cells.setdefault((row, dataset, bits), Cell(row, dataset, bits))
        cell.records[seed_of(r)] = r
    return Results(cells, rows, datasets, sorted({k[2] for k in cells}))


# ----- where records come from ---------------------------------------------------------------------------
def records_from_results_file(path: str | Path) -> list[dict]:
    """The records of a grid's results.json."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "bits" in r for r in records):
        raise ConfigError(f"{path}: expected a list of run records (a grid's results.json)")
    return records


def record_from_run(path: str | Path) -> dict:
    """The record of an evaluated run folder (its metrics.json, with its config); its row is the run's name."""
    run = RunFolder(path)
    metrics = run.load_metrics()
    if metrics is None:
        raise ConfigError(f"{path}: no metrics.json; evaluate the run first (attnhash evaluate {path})")
    record = dict(metrics)
    record.setdefault("config", run.saved_config() or {})
    record.setdefault("run", str(path))
    return record


def records_from_path(path: str | Path) -> list[dict]:
    """Records from a results.json file, a folder holding one, an evaluated run folder, or a folder of run
    folders; a one-line ConfigError for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return records_from_results_file(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a grid (.yaml), a results.json, a results folder or a run folder")
    if (path / "results.json").is_file():
        return records_from_results_file(path / "results.json")
    if (path / RunFolder.METRICS).is_file():
        return [record_from_run(path)]
    runs = sorted(p for p in path.iterdir() if (p / RunFolder.METRICS).is_file())
    if not runs:
        raise ConfigError(f"{path}: holds no results.json, no metrics.json and no evaluated run folder")
    return [record_from_run(p) for p in runs]


def run_folder(record: dict) -> RunFolder | None:
    """The record's run folder when it is still on disk with the checkpoint that made the record (a folder
    trained again since holds another model: its curves and codes would be passed off as the record's)."""
    path = record.get("run")
    if not path:
        return None
    run = RunFolder(path)
    if not run.has_model():
        return None
    want = record.get("fingerprint")
    return run if not want or run.fingerprint() == want else None
