#!/usr/bin/env bash
# Installs the external programs the end-to-end tests (test/e2e) drive:
#   skopeo, containerd + ctr, podman, docker.io (dockerd)   from apt (Debian/Ubuntu), needs root
#   registry (CNCF distribution v3) and crane   with `go install` into $(go env GOBIN or GOPATH)/bin
# Idempotent: anything already present at the right version is left alone, and
# `apt-get update` only runs when an apt package is missing.
set -euo pipefail

REGISTRY_VERSION=v3.1.2
CRANE_VERSION=v0.22.1

log() { echo "install-test-deps: $*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "root needed for: $*"
		exit 1
	fi
}

# --- apt packages -----------------------------------------------------------
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
if ! command -v containerd >/dev/null 2>&1 || ! command -v ctr >/dev/null 2>&1; then
	missing+=(containerd)
fi
command -v podman >/dev/null 2>&1 || missing+=(podman)
# dockerd lives in /usr/sbin, off a normal user's PATH.
if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ]; then
	missing+=(docker.io)
fi
if [ ${#missing[@]} -gt 0 ]; then
	if ! command -v apt-get >/dev/null 2>&1; then
		log "apt-get not found: install ${missing[*]} by other means"
		exit 1
	fi
	# The tests start their own dockerd and containerd with private
	# directories; the packages' maintainer scripts must not start the system
	# services. policy-rc.d exiting 101 forbids that (unless the host has one).
	created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
		as_root chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	remove_policy() { if [ "$created_policy" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
	trap remove_policy EXIT
	log "apt-get install ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	remove_policy
	trap - EXIT
else
	log "skopeo, containerd, ctr, podman and dockerd present"
fi

# --- Go tools -----------------------------------------------------------------
command -v go >/dev/null 2>&1 || { log "go not found on PATH"; exit 1; }
gobin="$(go env GOBIN)"
if [ -z "$gobin" ]; then
	gopath="$(go env GOPATH)"
	gobin="${gopath%%:*}/bin"
fi

# go_tool NAME VERSION PACKAGE VERSION-ARGS...: install unless the binary the
# tests will use (Go bin dir first, then PATH; see findTool in
# test/e2e/harness_test.go) already reports VERSION.
go_tool() {
	local name=$1 version=$2 pkg=$3
	shift 3
	local bin="" out=""
	if [ -x "$gobin/$name" ]; then
		bin="$gobin/$name"
	elif command -v "$name" >/dev/null 2>&1; then
		bin="$(command -v "$name")"
	fi
	if [ -n "$bin" ]; then
		out="$("$bin" "$@" 2>&1 || true)"
		case "$out" in
		*"$version"*)
			log "$name $version present ($bin)"
			return
			;;
		esac
		log "$bin reports '${out%%$'\n'*}', want $version"
	fi
	log "go install $pkg@$version"
	GOBIN="$gobin" go install "$pkg@$version"
}

go_tool registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry --version
go_tool crane "$CRANE_VERSION" github.com/google/go-containerregistry/cmd/crane version
log "done (Go tools in $gobin)"
