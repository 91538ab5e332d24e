#!/usr/bin/env bash
# Installs the external programs the end-to-end and conformance tests drive:
#   skopeo, containerd + ctr, podman, docker.io (dockerd)   from apt, needs root
#   registry (CNCF distribution v3.1.2) and crane            with go install
# Idempotent: what is present is left alone; apt-get update runs only when a
# package is missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=()
have skopeo || missing+=(skopeo)
{ have containerd && have ctr; } || missing+=(containerd)
have podman || missing+=(podman)
have dockerd || missing+=(docker.io)
apt_install "${missing[@]}"

go_tool registry github.com/distribution/distribution/v3/cmd/registry v3.1.2
go_tool crane github.com/google/go-containerregistry/cmd/crane v0.22.1
log "done (Go tools in $(gobin))"
