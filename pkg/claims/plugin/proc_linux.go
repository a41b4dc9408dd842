package plugin

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the plugin die with tsidp (Pdeathsig, even when tsidp
// is killed with SIGKILL) and lead its own process group, so that killing
// the group also ends anything the plugin started.
//
// Pdeathsig fires when the forking thread exits; the Go runtime keeps its
// threads unless a goroutine exits while locked to one, which tsidp does
// not do around plugin starts.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
}

// killGroup sends SIGKILL to the process group led by pid.
func killGroup(pid int) { syscall.Kill(-pid, syscall.SIGKILL) }
