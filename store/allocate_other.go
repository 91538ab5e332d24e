//go:build !linux

package store

import "os"

// allocate creates path with n bytes written (no fallocate here).
func allocate(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for left := n; left > 0 && err == nil; left -= int64(len(buf)) {
		_, err = f.Write(buf[:min(int64(len(buf)), left)])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
