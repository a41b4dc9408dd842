//go:build !tsidp_crashtest

package crashtest

// Enabled reports whether this binary was built with the crash hook.
const Enabled = false

// Point does nothing: this binary was built without the tsidp_crashtest tag.
func Point(step string) {}
