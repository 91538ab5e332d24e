//go:build unix

package store

import "golang.org/x/sys/unix"

// freeBytes is the space available to an unprivileged user on the
// filesystem holding path (root's reserved blocks do not count: Outpost
// runs as its own user).
func freeBytes(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil //nolint:unconvert // Bsize differs in type by platform
}
