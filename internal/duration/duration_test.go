package duration

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"0", 0, ""},
		{"0s", 0, ""},
		{"90s", 90 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"2562047h", 2562047 * time.Hour, ""},
		{"87600001h", 0, "87600001h is out of range: a duration can be at most 2562047h (about 292 years)"},
		{"99999999999999999999s", 0, "out of range"},
		{"15", 0, "15 is not a duration: write it with a unit"},
		{"soon", 0, "soon is not a duration"},
		{"1x", 0, "not a duration"},
		{"", 0, "not a duration"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Parse(%q) error = %v; want %q", tt.in, err, tt.wantErr)
		}
		if strings.Contains(tt.wantErr, "out of range") != errors.Is(err, ErrOutOfRange) {
			t.Errorf("Parse(%q): errors.Is(ErrOutOfRange) = %v", tt.in, errors.Is(err, ErrOutOfRange))
		}
	}
}
