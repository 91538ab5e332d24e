package testenv

import "syscall"

// procAttr puts a child in its own process group (so Stop reaches its
// children too) and kills it with the test binary, even if that is killed.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
