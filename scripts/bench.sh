#!/usr/bin/env bash
# Benchmarks with ratios against raw baselines measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run '^$' -bench . -benchtime 1x -timeout 60m ./e2e/
