// Package duration parses the durations people write in tsidp's
// configuration and requests, with errors that say what was wrong: not a
// duration at all, or a duration too long to represent.
package duration

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Max is the longest duration Go can represent, about 292 years.
const Max = time.Duration(1<<63 - 1)

// shape is what time.ParseDuration accepts, ignoring range: an optional
// sign and one or more numbers each followed by a unit.
var shape = regexp.MustCompile(`^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// ErrOutOfRange is wrapped by Parse's error for a well-formed duration that
// does not fit in a time.Duration.
var ErrOutOfRange = errors.New("out of range")

// Parse is time.ParseDuration with errors for people: "0" is zero (as for
// time.ParseDuration), a well-formed but overlong value such as
// "87600001h" is out of range (wrapping ErrOutOfRange), and anything else is
// not a duration. Errors name the value and carry no package prefix.
func Parse(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, nil
	}
	if IsOutOfRange(s) {
		return 0, fmt.Errorf("%s is %w: a duration can be at most %dh (about 292 years)", s, ErrOutOfRange, Max/time.Hour)
	}
	return 0, fmt.Errorf("%s is not a duration: write it with a unit, like 90s, 15m or 720h", s)
}

// IsOutOfRange reports whether s is written like a duration but is too long
// for time.ParseDuration.
func IsOutOfRange(s string) bool {
	if !shape.MatchString(s) {
		return false
	}
	_, err := time.ParseDuration(s)
	return err != nil
}

// Format writes d like time.Duration.String but without zero units, so
// "1h0m0s" reads "1h" and "30m0s" reads "30m".
func Format(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
