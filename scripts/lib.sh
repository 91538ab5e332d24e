# Shared by the scripts/install-*-deps.sh scripts; sourced, not run.
# Each installs only what is missing, so a second run does nothing.

log() { echo "${0##*/}: $*" >&2; }

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

# have NAME: the program is on PATH or in /usr/sbin (dockerd, nginx and
# debootstrap live there, off a normal user's PATH).
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# apt_install PKG...: installs Debian packages (none: nothing to do). The
# tests start their own daemons with private directories, so the packages'
# maintainer scripts must not start system services: a policy-rc.d that
# exits 101 forbids that while apt runs (unless the host has one already).
apt_install() {
	[ $# -gt 0 ] || return 0
	if ! command -v apt-get >/dev/null 2>&1; then
		log "apt-get not found: install $* by other means"
		exit 1
	fi
	local created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
		as_root chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	log "apt-get install $*"
	local rc=0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || rc=$?
	if [ "$created_policy" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
	return "$rc"
}

# gobin is where `go install` puts programs and where the tests look first.
gobin() {
	local dir
	dir="$(go env GOBIN)"
	[ -n "$dir" ] || dir="$(go env GOPATH | cut -d: -f1)/bin"
	echo "$dir"
}

# go_tool NAME PACKAGE VERSION: go-installs PACKAGE@VERSION unless
# $(gobin)/NAME was built from that module version (read from its build
# info: a go-installed nfpm reports its own version as "dev").
go_tool() {
	local name=$1 pkg=$2 version=$3 bin
	command -v go >/dev/null 2>&1 || { log "go not found on PATH"; exit 1; }
	bin="$(gobin)/$name"
	if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]].*[[:space:]]${version}([[:space:]]|$)"; then
		log "$name $version present ($bin)"
		return
	fi
	log "go install $pkg@$version"
	GOBIN="$(gobin)" go install "$pkg@$version"
}
