//go:build !tsidp_crashtest

package crashtest

import "testing"

// TestInertWithoutTag: in an ordinary build the hook is compiled out, and
// setting the variable does nothing.
func TestInertWithoutTag(t *testing.T) {
	if Enabled {
		t.Fatal("crash hook enabled without the tsidp_crashtest tag")
	}
	t.Setenv(EnvVar, BeforeSave)
	Point(BeforeSave) // must return
}
