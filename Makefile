# Outpost build, run and test entry points. `make run` and `make test` work on a fresh machine.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
OS        ?= $(shell $(GO) env GOOS)
ARCH      ?= $(shell $(GO) env GOARCH)
GOBIN     := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

.PHONY: build binary run test test-e2e bench fuzz

build: bin/outpost

bin/outpost: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/outpost

# make binary OS=linux ARCH=arm64 -> bin/outpost-linux-arm64 (BINDIR=DIR writes elsewhere)
BINDIR    ?= bin
binary:
	CGO_ENABLED=0 GOOS=$(OS) GOARCH=$(ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINDIR)/outpost-$(OS)-$(ARCH) ./cmd/outpost

run: build
	./bin/outpost serve

# Every product package under the race detector (fuzz targets run their
# seed corpora); the end-to-end, conformance and packaging suites drive the
# built binary and real clients.
PRODUCT   := ./cache/... ./cmd/... ./configs/... ./mirror/... ./service/... ./store/...
test: build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m $(PRODUCT)
	$(GO) test -count=1 -timeout 25m ./test/...

# Each fuzz target for FUZZTIME (default 1m); new crashers land in testdata/fuzz.
FUZZTIME  ?= 1m
FUZZ_TARGETS := cache:FuzzParseRoute cache:FuzzParseRange cache:FuzzNames mirror:FuzzCheckManifest store:FuzzParseManifest configs:FuzzParse
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t#*:}; \
		echo "fuzz $$pkg $$fn for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg/; \
	done

# Only the end-to-end suite with real clients (needs scripts/install-test-deps.sh, as root).
test-e2e: build
	$(GO) test -count=1 -timeout 10m ./test/e2e/

bench: build
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench

FORCE:

# --- Linux packages --------------------------------------------------------------
# make binaries    -> bin/outpost-linux-amd64, bin/outpost-linux-arm64
# make packages    -> dist/outpost_<v>-1_{amd64,arm64}.deb, dist/outpost-<v>-1.{x86_64,aarch64}.rpm
# Needs nfpm v2.45.2 (bash scripts/install-packaging-deps.sh). Knobs: VERSION, DIST,
# BINDIR, PKG_ARCHES, PKG_CONFIG (the /etc/outpost/config.yaml to ship).
# PKG_VERSION is VERSION made valid for dpkg and rpm: v0.1.0 -> 0.1.0,
# v0.1.0-3-gabc123-dirty -> 0.1.0+3.gabc123.dirty, 0.2.0-rc1 -> 0.2.0~rc1,
# a bare commit (no tag) abc123 -> 0.0.0+git.abc123.
DIST        ?= dist
PKG_ARCHES  ?= amd64 arm64
PKG_CONFIG  ?= packaging/config.yaml
PKG_VERSION ?= $(shell printf '%s\n' '$(VERSION)' | sed -E 's/^v//; /^[0-9]+[.][0-9]+/!s/^/0.0.0+git./; s/-([0-9]+)-g([0-9a-f]+)/+\1.g\2/; s/-dirty$$/+dirty/; s/([+][^+]*)[+]/\1./; s/-/~/g')

.PHONY: binaries packages

binaries:
	@set -e; for a in $(PKG_ARCHES); do $(MAKE) --no-print-directory binary OS=linux ARCH=$$a; done

packages:
	@command -v nfpm >/dev/null 2>&1 || { echo "nfpm not found: run bash scripts/install-packaging-deps.sh" >&2; exit 1; }
	@mkdir -p $(DIST)
	@set -e; for a in $(PKG_ARCHES); do \
		$(MAKE) --no-print-directory binary OS=linux ARCH=$$a; \
		for p in deb rpm; do \
			GOARCH=$$a PKG_VERSION='$(PKG_VERSION)' OUTPOST_BINDIR='$(BINDIR)' OUTPOST_PKG_CONFIG='$(PKG_CONFIG)' \
				nfpm package --config nfpm.yaml --packager $$p --target $(DIST)/; \
		done; \
	done
