package keys

import (
	"strings"
	"testing"
)

func TestParseAlgorithm(t *testing.T) {
	tests := []struct {
		in      string
		want    Algorithm
		wantErr bool
	}{
		{"ES256", ES256, false},
		{"RS256", RS256, false},
		{"EdDSA", EdDSA, false},
		{"es256", "", true},
		{"EDDSA", "", true},
		{"Ed25519", "", true},
		{"HS256", "", true},
		{"none", "", true},
		{"", "", true},
		{" ES256", "", true},
	}
	for _, tt := range tests {
		got, err := ParseAlgorithm(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), "keys: ") || !strings.Contains(err.Error(), "case-sensitive")) {
			t.Errorf("ParseAlgorithm(%q) error %q: want a keys: error that explains the names are case-sensitive", tt.in, err)
		}
	}
	for _, a := range Algorithms() {
		if got, err := ParseAlgorithm(a.String()); err != nil || got != a {
			t.Errorf("ParseAlgorithm(%q) = %q, %v", a, got, err)
		}
	}
}
