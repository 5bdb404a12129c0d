#!/usr/bin/env bash
# Benchmarks with ratios against raw baselines measured in the same run.
# Every target is printed next to its figure; the run ends with
# "N of M targets met". A missed target fails the run only with
# BENCH_STRICT=1. BENCH_RUNS (default 5), BENCH_WS_RUNS (3) and
# BENCH_IMAGE_RUNS (2) set how many alternated runs each median takes.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench . -benchtime 1x -timeout 120m ./e2e/
