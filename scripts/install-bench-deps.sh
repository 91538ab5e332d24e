#!/usr/bin/env bash
# Installs what `make bench` (test/bench) needs:
#   nginx             Debian's, started by the benchmark with its own config only
#   registry v3.1.2   the CNCF distribution registry, upstream and peer
# Idempotent: what is present is left alone.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

have nginx || apt_install nginx
go_tool registry github.com/distribution/distribution/v3/cmd/registry v3.1.2
