#!/bin/sh
# Outpost package: post-installation script, shared by the .deb (postinst) and
# the .rpm (%post).
#   deb: $1 = configure (or abort-*), $2 = previously configured version
#        (empty on a fresh install)
#   rpm: $1 = number of installed instances after this one: 1 install, 2 upgrade
# Creates the "outpost" system user, the data directory and the config's group;
# enables (never starts) the service on a fresh install and try-restarts it on
# upgrade. Works with no systemd running (chroots, containers, image builds).
set -e

unit=outpost.service
user=outpost
datadir=/var/lib/outpost
config=/etc/outpost/config.yaml

case "$1" in
	configure)
		if [ -z "$2" ]; then mode=install; else mode=upgrade; fi ;;
	abort-upgrade | abort-remove | abort-deconfigure)
		mode=abort ;;
	1) mode=install ;;
	[2-9] | [1-9][0-9]*) mode=upgrade ;;
	*) exit 0 ;;
esac

systemd_running() { [ -d /run/systemd/system ]; }

# --- service user and files ---------------------------------------------------
nologin=/bin/false
for s in /usr/sbin/nologin /sbin/nologin; do
	if [ -x "$s" ]; then nologin=$s; break; fi
done
if ! getent group "$user" >/dev/null 2>&1; then
	groupadd --system "$user"
fi
if ! getent passwd "$user" >/dev/null 2>&1; then
	useradd --system --gid "$user" --home-dir "$datadir" --no-create-home \
		--shell "$nologin" --comment "Outpost OCI cache" "$user"
fi

# The data directory belongs to the service user; nobody else may read it.
mkdir -p "$datadir"
chown "$user:$user" "$datadir"
chmod 0750 "$datadir"

# The config stays owned by root; the service reads it through its group.
# (The group cannot exist when the package is unpacked, hence here.)
if [ -f "$config" ]; then
	chgrp "$user" "$config"
	chmod 0640 "$config"
fi

# --- systemd --------------------------------------------------------------------
if systemd_running; then
	systemctl --system daemon-reload >/dev/null 2>&1 || true
fi

if command -v deb-systemd-helper >/dev/null 2>&1 && [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ]; then
	# Debian: deb-systemd-helper enables the unit even when systemd is not
	# running or not installed, and remembers an admin's "disable" on upgrades.
	deb-systemd-helper unmask "$unit" >/dev/null || true
	if deb-systemd-helper --quiet was-enabled "$unit"; then
		deb-systemd-helper enable "$unit" >/dev/null || true
	else
		deb-systemd-helper update-state "$unit" >/dev/null || true
	fi
elif [ "$mode" = install ] && command -v systemctl >/dev/null 2>&1; then
	# rpm (and dpkg without init-system-helpers): enable on fresh install only,
	# so an admin's "disable" survives upgrades. systemctl enable works offline.
	systemctl --system enable "$unit" >/dev/null 2>&1 || true
fi

# Never started on a fresh install (edit the config first); a running
# service picks up the new binary on upgrade.
if [ "$mode" = upgrade ] && systemd_running; then
	if command -v deb-systemd-invoke >/dev/null 2>&1 && [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ]; then
		deb-systemd-invoke try-restart "$unit" >/dev/null || true
	else
		systemctl --system try-restart "$unit" >/dev/null 2>&1 || true
	fi
fi

exit 0
