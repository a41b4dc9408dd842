package server

import (
	"strings"
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"300", 300 * time.Second, ""},
		{"5m", 5 * time.Minute, ""},
		{"0", 0, "out of range"},
		{"-5m", 0, "not a number of seconds or a duration"},
		{"soon", 0, "not a number of seconds or a duration"},
		{"87600001h", 0, `ttl "87600001h" is out of range`},
		{"99999999999", 0, "out of range"},
	}
	for _, tt := range tests {
		got, err := parseTTL(tt.in)
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("parseTTL(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseTTL(%q) error = %v; want %q", tt.in, err, tt.wantErr)
		}
	}
}
