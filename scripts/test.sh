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
# The example orchestrator is a module of its own (a program outside this
# repository would be): ./... above does not reach it.
(cd examples/orchestrator && $go vet ./... && $go build -o /dev/null ./... &&
  $go mod tidy -diff >/dev/null) || { echo "examples/orchestrator does not build, or its go.mod/go.sum are not tidy" >&2; exit 1; }

echo "== unit tests"
$go test -count=1 $($go list ./... | grep -v /e2e)

echo "== end-to-end tests (real VMs under QEMU)"
# The real npm opencode client, for the test that attaches it to a VM's
# server; the version the agent image pins.
if [[ -z ${BANGER_TEST_OPENCODE:-} ]]; then
  oc_version=$(sed -n 's/^\t"opencode-ai@\(.*\)",$/\1/p' internal/image/agents.go)
  [[ -n $oc_version ]] || { echo "cannot read the pinned opencode-ai version from internal/image/agents.go" >&2; exit 1; }
  oc_prefix=/var/cache/banger-test/opencode-$oc_version
  if [[ ! -x $oc_prefix/bin/opencode ]]; then
    npm install -g -q --prefix "$oc_prefix" "opencode-ai@$oc_version" >/dev/null
  fi
  export BANGER_TEST_OPENCODE=$oc_prefix/bin/opencode
fi
$go test -count=1 -v -timeout 60m ./e2e/...
