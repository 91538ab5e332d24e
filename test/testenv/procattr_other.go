//go:build !linux

package testenv

import "syscall"

// procAttr puts a child in its own process group; only Linux can also tie
// its life to the test binary's.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
