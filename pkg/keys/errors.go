package keys

import (
	"fmt"
	"strings"
)

// wrapError is an error "keys: <msg>: <err>" that does not repeat the
// "keys: " prefix when err comes from this package too.
type wrapError struct {
	msg string
	err error
}

func (e *wrapError) Error() string { return "keys: " + e.msg + ": " + unprefixed(e.err) }
func (e *wrapError) Unwrap() error { return e.err }

// wrapf returns err wrapped as "keys: <format>: <err>".
func wrapf(err error, format string, args ...any) error {
	return &wrapError{fmt.Sprintf(format, args...), err}
}

// unprefixed returns err's message without the "keys: " prefix.
func unprefixed(err error) string { return strings.TrimPrefix(err.Error(), "keys: ") }
