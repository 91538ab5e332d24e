# Outpost build, run and test entry points. `make run` and `make test` work on a fresh machine.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
OS        ?= $(shell $(GO) env GOOS)
ARCH      ?= $(shell $(GO) env GOARCH)
GOBIN     := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

.PHONY: build binary run test test-e2e bench

build: bin/outpost

bin/outpost: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/outpost

# make binary OS=linux ARCH=arm64 -> bin/outpost-linux-arm64
binary:
	CGO_ENABLED=0 GOOS=$(OS) GOARCH=$(ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/outpost-$(OS)-$(ARCH) ./cmd/outpost

run: build
	./bin/outpost serve

test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# Only the end-to-end suite with real clients (needs scripts/install-test-deps.sh, as root).
test-e2e: build
	$(GO) test -count=1 -timeout 10m ./test/e2e/

bench: build
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench

FORCE:
