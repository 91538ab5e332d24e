#!/usr/bin/env bash
# Installs what `make bench` (test/bench) needs, and nothing when it is there:
#   - nginx (Debian package), run by the benchmark with its own config only
#   - the CNCF distribution registry v3.1.2 (`registry`, into $(go env GOPATH)/bin)
# Idempotent: safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail

REGISTRY_MODULE=github.com/distribution/distribution/v3/cmd/registry
REGISTRY_VERSION=v3.1.2

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi

# nginx: the benchmark starts its own instance on 127.0.0.1; make sure the
# package's install scripts do not start the system service (port 80).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  cleanup() { if [ "$created_policy" = 1 ]; then "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup EXIT
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx
  cleanup
  trap - EXIT
  echo "installed nginx: $(/usr/sbin/nginx -v 2>&1)"
else
  echo "nginx present: $( (command -v nginx || echo /usr/sbin/nginx) | head -1)"
fi

# registry: the exact version the benchmark's numbers were taken with.
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
registry="$gobin/registry"
if [ -x "$registry" ] && "$registry" --version 2>/dev/null | grep -q " $REGISTRY_VERSION"; then
  echo "registry present: $("$registry" --version)"
else
  go install "$REGISTRY_MODULE@$REGISTRY_VERSION"
  echo "installed registry: $("$registry" --version)"
fi
