# banger — two commands matter: `make run` and `make test`.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/bangerdev/banger/internal/buildinfo.Version=$(VERSION) -X github.com/bangerdev/banger/internal/buildinfo.Commit=$(COMMIT)
GO ?= go

.PHONY: build install deps run test test-unit test-e2e bench lint fmt clean

## build: bin/banger (CLI + daemon) and bin/banger-agent (static guest agent)
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/banger ./cmd/banger
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/banger-agent ./cmd/banger-agent

## deps: the Debian packages banger needs on a fresh machine (idempotent)
deps:
	./scripts/install-deps.sh

## install: banger on PATH, banger-agent where the daemon looks for it
PREFIX ?= /usr/local
install: build
	install -D -m 0755 bin/banger $(DESTDIR)$(PREFIX)/bin/banger
	install -D -m 0755 bin/banger-agent $(DESTDIR)$(PREFIX)/lib/banger/banger-agent

## run: set up a fresh Debian machine and boot a VM from this repo
run: deps install
	./scripts/run.sh

## test: every test, including the end-to-end suite that boots real VMs
test: deps build
	./scripts/test.sh

test-unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

test-e2e: build
	$(GO) test -count=1 -v -timeout 60m ./e2e/...

## bench: create-to-ready vs raw QEMU, agent channel vs ssh, daemon RSS
bench: deps build
	./scripts/bench.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	cd examples/orchestrator && $(GO) vet ./... && $(GO) build -o /dev/null ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
