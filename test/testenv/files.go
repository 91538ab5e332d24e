package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// WriteFile writes content to path, creating its directories.
func WriteFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// RemoveIfCreated removes path after the test if it (or an ancestor) does
// not exist now: the topmost missing ancestor is what the test run creates
// on the host (tools that write outside any directory they are given).
func RemoveIfCreated(tb testing.TB, path string) {
	tb.Helper()
	top := ""
	for p := filepath.Clean(path); p != "/" && p != "."; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		top = p
	}
	if top == "" {
		return
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(top); err != nil {
			tb.Errorf("cleaning host side effect %s: %v", top, err)
		}
	})
}
