#!/usr/bin/env bash
# Every benchmark behind the issues' closing notes, in order; each writes its table under benchmarks/results/.
# Takes hours on 2 CPU cores (about 150 training runs); an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATTNHASH_CACHE_DIR=${ATTNHASH_CACHE_DIR:-$PWD/benchmarks/cache}   # splits + shared frozen-stage cache
python3 benchmarks/bench_throughput.py --image-size 32
for grid in dpsh_backbones table3_attention supervised unsupervised seed_spread uhga_seeds dhida_input ssdh_budget \
            attention_64px csq_centres uhga_attention attention_study; do
  python3 -m attnhash experiment "benchmarks/grids/$grid.yaml" -q
done
python3 benchmarks/seed_spread_summary.py seed_spread
python3 benchmarks/seed_spread_summary.py uhga_seeds
python3 benchmarks/dhida_conv_probe.py
python3 benchmarks/attention_study_summary.py
python3 benchmarks/docs_reports.py
python3 benchmarks/bench_index.py
python3 benchmarks/load_test.py --workdir "${TMPDIR:-/tmp}/attnhash-load-test"
