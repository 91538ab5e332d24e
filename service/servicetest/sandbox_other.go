//go:build !linux

package servicetest

import "testing"

// Sandbox needs Linux mount namespaces; elsewhere the test is skipped.
func Sandbox(t *testing.T) bool {
	t.Skip("the /etc overlay sandbox is Linux only")
	return false
}
