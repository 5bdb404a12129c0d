#!/usr/bin/env bash
# Every test: lint, unit tests, then the end-to-end suite that boots real
# VMs under QEMU. Called by `make test` and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
go=${GO:-go}

echo "== lint"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [[ -n $unformatted ]]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
$go vet ./...
$go mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'" >&2; exit 1; }

echo "== unit tests"
$go test -count=1 $($go list ./... | grep -v /e2e)

echo "== end-to-end tests (real VMs under QEMU)"
$go test -count=1 -v -timeout 60m ./e2e/...
