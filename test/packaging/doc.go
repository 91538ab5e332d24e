// Package packaging tests the Linux packages built by `make packages` (nfpm):
// the contents and metadata of the .deb and .rpm for amd64 and arm64, the
// systemd unit (systemd-analyze verify), installing, serving, upgrading and
// purging the .deb inside a throwaway debootstrap chroot (plus the rpm
// scriptlets in the same chroot), and a real pull-through by the linux/arm64
// binary under qemu-aarch64-static.
//
// External programs (make, nfpm, dpkg-deb, rpm, rpm2cpio, systemd-analyze,
// unshare, debootstrap, qemu-aarch64-static, the CNCF distribution registry)
// come from scripts/install-packaging-deps.sh and scripts/install-test-deps.sh.
// A missing one skips the test locally and fails it when CI=true. The chroot
// and systemd tests need root.
//
// Nothing touches the host: rpm queries use a temporary --dbpath, every mount
// happens inside a private mount namespace (unshare -m), the chroot lives in a
// temporary directory (or, with OUTPOST_PKGTEST_CACHE=DIR, its pristine
// tarball is cached in DIR), and all processes are stopped at the end of the
// test that started them.
package packaging
