#!/usr/bin/env bash
# Installs what `make packages` and the packaging tests (test/packaging) need,
# and nothing that is already there:
#   rpm, rpm2cpio     inspect the .rpm files and run their scriptlets (apt)
#   debootstrap       throwaway Debian chroot for the .deb install test  (apt)
#   qemu-user-static  qemu-aarch64-static to run the linux/arm64 binary  (apt)
#   systemd           systemd-analyze verify for the unit file           (apt)
#   dpkg              dpkg-deb (always there on Debian; dpkg-dev is not needed)
#   nfpm v2.45.2      builds the .deb/.rpm (go install; later versions cannot
#                     be fetched from the Go module proxy)
# Idempotent: `apt-get update` runs once and only when an apt package is missing.
# Needs root (or sudo) for apt-get.
set -euo pipefail

NFPM_MODULE=github.com/goreleaser/nfpm/v2/cmd/nfpm
NFPM_VERSION=v2.45.2

log() { echo "install-packaging-deps: $*" >&2; }

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
command -v rpm >/dev/null 2>&1 && command -v rpm2cpio >/dev/null 2>&1 || missing+=(rpm rpm2cpio)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
	if ! command -v apt-get >/dev/null 2>&1; then
		log "apt-get not found: install ${missing[*]} by other means"
		exit 1
	fi
	log "installing ${missing[*]}"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	log "apt packages present (rpm, rpm2cpio, debootstrap, qemu-user-static, systemd-analyze, dpkg-deb)"
fi

# --- nfpm (pinned) ----------------------------------------------------------
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
nfpm="$gobin/nfpm"
# `nfpm --version` of a go-installed nfpm says "dev"; the module version is in the build info.
if [ -x "$nfpm" ] && go version -m "$nfpm" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/goreleaser/nfpm/v2[[:space:]]+${NFPM_VERSION}[[:space:]]"; then
	log "nfpm present: $nfpm ${NFPM_VERSION}"
else
	log "go install $NFPM_MODULE@$NFPM_VERSION"
	go install "$NFPM_MODULE@$NFPM_VERSION"
	"$nfpm" --version >/dev/null
	log "installed nfpm ${NFPM_VERSION} at $nfpm"
fi
