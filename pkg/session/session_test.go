package session

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRefreshToken(t *testing.T) {
	id, secret := NewID(), NewSecret()
	tok := RefreshToken(id, secret)
	gotID, gotSecret, err := ParseRefreshToken(tok)
	if err != nil || gotID != id || gotSecret != secret {
		t.Fatalf("ParseRefreshToken(%q) = %q, %q, %v", tok, gotID, gotSecret, err)
	}
	for _, bad := range []string{"", "rt1.", "rt2." + id + "." + secret, "rt1." + id + secret, "rt1." + id + "." + secret[1:], strings.ToUpper(tok[:3]) + tok[3:]} {
		if _, _, err := ParseRefreshToken(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("ParseRefreshToken(%q) = %v, want ErrNotFound", bad, err)
		}
	}
	if NewSecret() == NewSecret() || len(NewSecret()) != 43 || len(NewID()) != 22 {
		t.Error("secrets are not random 256-bit values, or IDs not 128-bit")
	}
	if FamilyID(id) == id || FamilyID(id) != FamilyID(id) || strings.Contains(FamilyID(id), id) {
		t.Error("FamilyID is not a deterministic one-way function of the handle")
	}
	if CodeHash("x") == PendingHash("x") {
		t.Error("a code and a pending login share a key")
	}
}

func TestFamilyEnded(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	f := Family{LastUsed: t0, IdleTimeout: time.Hour, Expires: t0.Add(3 * time.Hour)}
	tests := []struct {
		at      time.Time
		revoked string
		want    string
	}{
		{t0.Add(59 * time.Minute), "", ""},
		{t0.Add(time.Hour), "", "idle"},
		{t0.Add(time.Minute), "refresh token reused", "revoked: refresh token reused"},
	}
	for _, tt := range tests {
		g := f
		g.Revoked = tt.revoked
		if got := g.Ended(tt.at); (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("Ended(%v, revoked %q) = %q, want %q", tt.at, tt.revoked, got, tt.want)
		}
	}
	g := f
	g.LastUsed = t0.Add(150 * time.Minute)
	if got := g.Ended(t0.Add(3 * time.Hour)); !strings.Contains(got, "lifetime") {
		t.Errorf("at the absolute end, with recent use: %q", got)
	}
}
