//go:build unix && !linux

package plugin

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the plugin in its own process group. Outside Linux there
// is no parent-death signal: a plugin outlives a tsidp killed with SIGKILL
// until its next write to a closed pipe.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// killGroup sends SIGKILL to the process group led by pid.
func killGroup(pid int) { syscall.Kill(-pid, syscall.SIGKILL) }
