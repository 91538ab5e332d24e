//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrLocked means another process has the store open (`outpost serve`,
// while `outpost sync` tries to): ask that process instead.
var ErrLocked = errors.New("the store is in use by another Outpost process")

// lockRoot takes the store's process lock, before anything under root is
// touched: a second process must not sweep the first one's sessions.
func lockRoot(root string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, "outpost.lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("store: %s: %w", root, ErrLocked)
		}
		return nil, fmt.Errorf("store: locking %s: %w", root, err)
	}
	return f, nil
}
