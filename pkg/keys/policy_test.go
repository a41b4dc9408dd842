package keys

import (
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
)

func TestPolicyProvision(t *testing.T) {
	var p Policy
	p.Provision()
	want := Policy{
		Algorithms:     []Algorithm{ES256, RS256, EdDSA},
		RotationPeriod: 720 * time.Hour,
		JWKSMaxAge:     time.Hour,
		ClockSkew:      2 * time.Minute,
		MaxTokenTTL:    24 * time.Hour,
		RSABits:        2048,
	}
	if strings.Join(algNames(p.Algorithms), ",") != "ES256,RS256,EdDSA" ||
		p.RotationPeriod != want.RotationPeriod || p.JWKSMaxAge != want.JWKSMaxAge ||
		p.ClockSkew != want.ClockSkew || p.MaxTokenTTL != want.MaxTokenTTL || p.RSABits != want.RSABits {
		t.Errorf("Provision() = %+v; want %+v", p, want)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("default policy does not validate: %v", err)
	}
	// Set values are kept.
	q := Policy{Algorithms: []Algorithm{EdDSA}, RotationPeriod: time.Hour * 2, RSABits: 4096}
	q.Provision()
	if len(q.Algorithms) != 1 || q.RotationPeriod != 2*time.Hour || q.RSABits != 4096 {
		t.Errorf("Provision overwrote set fields: %+v", q)
	}
}

func algNames(as []Algorithm) []string {
	var s []string
	for _, a := range as {
		s = append(s, string(a))
	}
	return s
}

func TestPolicyValidate(t *testing.T) {
	base := testPolicy()
	tests := []struct {
		name    string
		edit    func(p *Policy)
		wantErr string // empty: valid
	}{
		{"defaults", func(p *Policy) {}, ""},
		{"rotation disabled", func(p *Policy) { p.RotationPeriod = 0 }, ""},
		{"rotation exactly max-age plus skew", func(p *Policy) {
			p.JWKSMaxAge, p.ClockSkew, p.RotationPeriod = time.Hour, 5*time.Minute, 65*time.Minute
		}, ""},
		{"rotation shorter than max-age plus skew", func(p *Policy) {
			p.JWKSMaxAge, p.ClockSkew, p.RotationPeriod = time.Hour, 5*time.Minute, 30*time.Minute
		}, "keys: rotation_period 30m is shorter than jwks_max_age 1h + clock_skew 5m"},
		{"rotation one second short", func(p *Policy) {
			p.JWKSMaxAge, p.ClockSkew, p.RotationPeriod = time.Hour, 2*time.Minute, time.Hour+2*time.Minute-time.Second
		}, "keys: rotation_period 1h1m59s is shorter than jwks_max_age 1h + clock_skew 2m"},
		{"no max-age", func(p *Policy) { p.JWKSMaxAge, p.ClockSkew, p.RotationPeriod = 0, 0, time.Minute }, ""},
		{"negative rotation", func(p *Policy) { p.RotationPeriod = -time.Hour }, "keys: rotation_period -1h is negative"},
		{"negative max-age", func(p *Policy) { p.JWKSMaxAge = -time.Second }, "keys: jwks_max_age -1s is negative"},
		{"negative skew", func(p *Policy) { p.ClockSkew = -time.Minute }, "keys: clock_skew -1m is negative"},
		{"zero token ttl", func(p *Policy) { p.MaxTokenTTL = 0 }, "keys: max_token_ttl must be positive"},
		{"huge token ttl", func(p *Policy) { p.MaxTokenTTL = 100000 * time.Hour }, "keys: max_token_ttl 100000h is longer than the limit of 87600h"},
		{"no algorithms", func(p *Policy) { p.Algorithms = nil }, "keys: algorithms is empty"},
		{"unknown algorithm", func(p *Policy) { p.Algorithms = []Algorithm{"HS256"} }, `keys: algorithms: unknown algorithm "HS256"`},
		{"duplicate algorithm", func(p *Policy) { p.Algorithms = []Algorithm{ES256, RS256, ES256} }, "keys: algorithms lists ES256 twice"},
		{"rsa 1024", func(p *Policy) { p.RSABits = 1024 }, "keys: rsa_bits 1024 is not one of 2048, 3072, 4096"},
		{"rsa 3072", func(p *Policy) { p.RSABits = 3072 }, ""},
		{"rsa 4096", func(p *Policy) { p.RSABits = 4096 }, ""},
		{"rsa 2047", func(p *Policy) { p.RSABits = 2047 }, "keys: rsa_bits 2047"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base
			p.Algorithms = append([]Algorithm(nil), base.Algorithms...)
			tt.edit(&p)
			err := p.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v; want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate() = nil; want %q", tt.wantErr)
			case tt.wantErr != "" && !strings.HasPrefix(err.Error(), tt.wantErr):
				t.Fatalf("Validate() = %q; want it to start with %q", err, tt.wantErr)
			}
			// Whenever Validate accepts a policy, its guarantees hold.
			if err == nil {
				for _, g := range p.Guarantees() {
					if !g.Holds {
						t.Errorf("valid policy, but %s", g)
					}
				}
			}
		})
	}
}

func TestPolicyGuarantees(t *testing.T) {
	p := testPolicy()
	p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL, p.RotationPeriod = time.Hour, 5*time.Minute, 12*time.Hour, 48*time.Hour
	gs := p.Guarantees()
	if len(gs) != 2 {
		t.Fatalf("got %d guarantees", len(gs))
	}
	if g := gs[0]; g.Name != "next_published_before_use" || g.Have != 48*time.Hour || g.Need != 65*time.Minute || !g.Holds {
		t.Errorf("publication guarantee = %+v", g)
	}
	if g := gs[1]; g.Name != "retired_retention" || g.Have != 12*time.Hour+5*time.Minute || g.Need != g.Have || !g.Holds {
		t.Errorf("retention guarantee = %+v", g)
	}
	if got, want := gs[0].String(), "next_published_before_use 48h >= 1h5m: holds"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
	p.RotationPeriod = 30 * time.Minute // invalid, and the guarantee says so
	if g := p.Guarantees()[0]; g.Holds || !strings.Contains(g.String(), "BROKEN") {
		t.Errorf("publication guarantee with a 30m rotation = %s; want broken", g)
	}
	p.RotationPeriod = 0 // manual rotation only: Rotate enforces the lead
	if g := p.Guarantees()[0]; !g.Holds || g.Have != 65*time.Minute {
		t.Errorf("publication guarantee without scheduled rotation = %s", g)
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour:                   "1h",
		30 * time.Minute:            "30m",
		90 * time.Minute:            "1h30m",
		720 * time.Hour:             "720h",
		2*time.Minute + time.Second: "2m1s",
		1500 * time.Millisecond:     "1.5s",
		0:                           "0s",
	} {
		if got := duration.Format(d); got != want {
			t.Errorf("duration.Format(%v) = %q; want %q", d, got, want)
		}
	}
}
