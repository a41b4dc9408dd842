package tailnet_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoTestingDeps checks that the package can ship in the tsidp binary:
// it must not pull in the testing package (directly or through
// tailscale.com/tstest/integration and friends).
func TestNoTestingDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "github.com/tsidp/tsidp/pkg/tailnet").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := map[string]bool{
		"testing":                          true,
		"tailscale.com/tstest":             true,
		"tailscale.com/tstest/integration": true,
		"tailscale.com/net/stun/stuntest":  true,
	}
	var n int
	for _, p := range strings.Fields(string(out)) {
		n++
		if banned[p] {
			t.Errorf("pkg/tailnet depends on %s", p)
		}
	}
	if n < 10 {
		t.Fatalf("go list -deps printed only %d packages: %s", n, out)
	}
}
