//go:build !linux

package sdk

// dieWithParent does nothing outside Linux, which has no parent-death signal.
func dieWithParent() {}
