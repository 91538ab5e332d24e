#!/bin/sh
# Outpost package: post-removal script, shared by the .deb (postrm) and the
# .rpm (%postun).
#   deb: $1 = remove | purge | upgrade | failed-upgrade | abort-install | abort-upgrade | disappear
#   rpm: $1 = number of instances left: 0 erase, 1 upgrade
# deb purge removes the "outpost" user, /etc/outpost and the cache in
# /var/lib/outpost. rpm has no purge: the user and the cached data are kept
# (rpm itself keeps an edited config as config.yaml.rpmsave).
set -e

unit=outpost.service
user=outpost

case "$1" in
	remove | purge | 0)
		if [ -d /run/systemd/system ]; then
			systemctl --system daemon-reload >/dev/null 2>&1 || true
		fi
		;;
esac

if [ "$1" = purge ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper purge "$unit" >/dev/null || true
		deb-systemd-helper unmask "$unit" >/dev/null || true
	fi
	rm -rf /var/lib/outpost /etc/outpost
	if getent passwd "$user" >/dev/null 2>&1; then
		userdel "$user" >/dev/null 2>&1 || true
	fi
	if getent group "$user" >/dev/null 2>&1; then
		groupdel "$user" >/dev/null 2>&1 || true
	fi
fi

exit 0
