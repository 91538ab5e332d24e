#!/usr/bin/env bash
# Installs what `make packages` and the packaging tests (test/packaging) need:
#   rpm, rpm2cpio     inspect the .rpm files and run their scriptlets (apt)
#   debootstrap       throwaway Debian chroot for the .deb install test  (apt)
#   qemu-user-static  qemu-aarch64-static to run the linux/arm64 binary  (apt)
#   systemd           systemd-analyze verify for the unit file           (apt)
#   dpkg              dpkg-deb (always there on Debian)
#   nfpm v2.45.2      builds the .deb/.rpm (go install; later versions cannot
#                     be fetched from the Go module proxy)
# Idempotent: what is present is left alone; apt-get update runs only when a
# package is missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=()
{ have rpm && have rpm2cpio; } || missing+=(rpm rpm2cpio)
have debootstrap || missing+=(debootstrap)
have qemu-aarch64-static || missing+=(qemu-user-static)
have systemd-analyze || missing+=(systemd)
have dpkg-deb || missing+=(dpkg)
apt_install "${missing[@]}"

go_tool nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm v2.45.2
