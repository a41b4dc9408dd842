//go:build tsidp_crashtest

package crashtest

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// Enabled reports whether this binary was built with the crash hook.
const Enabled = true

var target = sync.OnceValue(func() string { return os.Getenv(EnvVar) })

// Point kills the process with SIGKILL if step is the one named by
// TSIDP_TEST_CRASH_AT.
func Point(step string) {
	if step != target() {
		return
	}
	fmt.Fprintf(os.Stderr, "crashtest: SIGKILL at %s\n", step)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; never continue past the step
}
