package sdk

import "golang.org/x/sys/unix"

// dieWithParent asks the kernel to kill this process when its parent dies.
// tsidp sets the same for the processes it starts; setting it here too
// covers plugins started through a wrapper script, whose parent is the
// wrapper rather than tsidp.
func dieWithParent() {
	unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
}
