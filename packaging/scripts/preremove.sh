#!/bin/sh
# Outpost package: pre-removal script, shared by the .deb (prerm) and the .rpm
# (%preun).
#   deb: $1 = remove | upgrade | deconfigure | failed-upgrade
#   rpm: $1 = number of instances left after this one is gone: 0 erase, 1 upgrade
# On removal (not on upgrade) the service is stopped and disabled.
set -e

unit=outpost.service

case "$1" in
	remove | 0) ;;
	*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	if command -v deb-systemd-invoke >/dev/null 2>&1 && [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ]; then
		deb-systemd-invoke stop "$unit" >/dev/null || true
	else
		systemctl --system stop "$unit" >/dev/null 2>&1 || true
	fi
fi

if command -v deb-systemd-helper >/dev/null 2>&1 && [ -n "${DPKG_MAINTSCRIPT_PACKAGE:-}" ]; then
	# Removes the enablement links and forgets the state, so that a later
	# reinstall behaves like a fresh install (enabled again).
	deb-systemd-helper purge "$unit" >/dev/null || true
elif command -v systemctl >/dev/null 2>&1; then
	systemctl --system disable "$unit" >/dev/null 2>&1 || true
fi

exit 0
