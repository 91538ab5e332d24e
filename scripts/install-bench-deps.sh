#!/usr/bin/env bash
# Installs what `make bench` (test/bench) needs:
#   nginx             Debian's, started by the benchmark with its own config only
#   registry v3.1.2   the CNCF distribution registry, upstream and peer
#   skopeo            Debian's, and regsync v0.11.1 (regclient): the mirror run's peers
# Idempotent: what is present is left alone.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=()
have nginx || missing+=(nginx)
have skopeo || missing+=(skopeo)
apt_install "${missing[@]}"
go_tool registry github.com/distribution/distribution/v3/cmd/registry v3.1.2
go_tool regsync github.com/regclient/regclient/cmd/regsync v0.11.1
