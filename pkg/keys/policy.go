package keys

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
)

// Policy holds the configured numbers that drive the key lifecycle. Call
// Provision to fill defaults, then Validate.
type Policy struct {
	// Algorithms lists the algorithms to keep signing keys for. Default:
	// ES256, RS256, EdDSA.
	Algorithms []Algorithm
	// RotationPeriod is how long a key signs before scheduled rotation
	// replaces it. Default 720h (30 days); 0 disables scheduled rotation
	// (set it after Provision, which treats 0 as "use the default").
	RotationPeriod time.Duration
	// JWKSMaxAge is the Cache-Control max-age of the JWKS: how long a
	// verifier may go without seeing a newly published key. Default 1h.
	JWKSMaxAge time.Duration
	// ClockSkew is the clock difference assumed between tsidp and
	// verifiers. Default 2m.
	ClockSkew time.Duration
	// MaxTokenTTL is the longest lifetime any token can get. Default 24h.
	MaxTokenTTL time.Duration
	// RSABits is the modulus size of generated RSA keys: 2048 (default),
	// 3072 or 4096.
	RSABits int
}

// Policy defaults.
const (
	DefaultRotationPeriod = 30 * 24 * time.Hour
	DefaultJWKSMaxAge     = time.Hour
	DefaultClockSkew      = 2 * time.Minute
	DefaultMaxTokenTTL    = 24 * time.Hour
	DefaultRSABits        = 2048
)

// maxPolicyDuration bounds every configured duration, so that sums of them
// cannot overflow and typos such as "87600000h" are caught.
const maxPolicyDuration = 10 * 365 * 24 * time.Hour

// RevokedRetention is how long a revoked key's tombstone (its public key and
// dates, never private material) stays in the set before Prune drops it.
// While it is there, listing shows the key and importing it again fails.
const RevokedRetention = 90 * 24 * time.Hour

// Provision fills zero fields with their defaults.
func (p *Policy) Provision() {
	if len(p.Algorithms) == 0 {
		p.Algorithms = Algorithms() // all of them
	}
	if p.RotationPeriod == 0 {
		p.RotationPeriod = DefaultRotationPeriod
	}
	if p.JWKSMaxAge == 0 {
		p.JWKSMaxAge = DefaultJWKSMaxAge
	}
	if p.ClockSkew == 0 {
		p.ClockSkew = DefaultClockSkew
	}
	if p.MaxTokenTTL == 0 {
		p.MaxTokenTTL = DefaultMaxTokenTTL
	}
	if p.RSABits == 0 {
		p.RSABits = DefaultRSABits
	}
}

// Validate reports the first setting that is out of range or that would
// break the lifecycle guarantees:
//
//   - a next key is published at least JWKSMaxAge+ClockSkew before it signs,
//     so scheduled rotation must not come sooner: RotationPeriod (when not
//     0) >= JWKSMaxAge + ClockSkew;
//   - a retired key stays published at least MaxTokenTTL+ClockSkew after it
//     stopped signing, which needs a positive MaxTokenTTL.
func (p Policy) Validate() error {
	if len(p.Algorithms) == 0 {
		return fmt.Errorf("keys: algorithms is empty; configure at least one of ES256, RS256, EdDSA")
	}
	var seen [numAlgorithms]bool
	for _, a := range p.Algorithms {
		i := a.index()
		if i < 0 {
			return fmt.Errorf("keys: algorithms: unknown algorithm %q (want ES256, RS256 or EdDSA)", a)
		}
		if seen[i] {
			return fmt.Errorf("keys: algorithms lists %s twice", a)
		}
		seen[i] = true
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"rotation_period", p.RotationPeriod},
		{"jwks_max_age", p.JWKSMaxAge},
		{"clock_skew", p.ClockSkew},
		{"max_token_ttl", p.MaxTokenTTL},
	} {
		if f.d < 0 {
			return fmt.Errorf("keys: %s %s is negative", f.name, duration.Format(f.d))
		}
		if f.d > maxPolicyDuration {
			return fmt.Errorf("keys: %s %s is longer than the limit of %s", f.name, duration.Format(f.d), duration.Format(maxPolicyDuration))
		}
	}
	if p.MaxTokenTTL == 0 {
		return fmt.Errorf("keys: max_token_ttl must be positive")
	}
	if p.RotationPeriod > 0 && p.RotationPeriod < p.publishLead() {
		return fmt.Errorf("keys: rotation_period %s is shorter than jwks_max_age %s + clock_skew %s; a new key must be published that long before it signs",
			duration.Format(p.RotationPeriod), duration.Format(p.JWKSMaxAge), duration.Format(p.ClockSkew))
	}
	switch p.RSABits {
	case 2048, 3072, 4096:
	default:
		return fmt.Errorf("keys: rsa_bits %d is not one of 2048, 3072, 4096", p.RSABits)
	}
	return nil
}

// enabled reports whether alg is one of p.Algorithms.
func (p Policy) enabled(alg Algorithm) bool {
	for _, a := range p.Algorithms {
		if a == alg {
			return true
		}
	}
	return false
}

// publishLead is how long a key must be published before it signs: the
// longest a verifier may serve a JWKS from cache, plus clock skew.
func (p Policy) publishLead() time.Duration { return p.JWKSMaxAge + p.ClockSkew }

// retention is how long a retired key stays published after it stopped
// signing: until the last token it signed has expired, plus clock skew.
func (p Policy) retention() time.Duration { return p.MaxTokenTTL + p.ClockSkew }

// Guarantee is one lifecycle guarantee: what the configuration or the key
// set provides (Have) against what verifiers need (Need).
// In JSON, durations are Go duration strings ("1h2m").
type Guarantee struct {
	// Name is "next_published_before_use" or "retired_retention".
	Name  string
	Have  time.Duration
	Need  time.Duration
	Holds bool
}

type guaranteeJSON struct {
	Name  string `json:"name"`
	Have  string `json:"have"`
	Need  string `json:"need"`
	Holds bool   `json:"holds"`
}

// MarshalJSON implements json.Marshaler.
func (g Guarantee) MarshalJSON() ([]byte, error) {
	return json.Marshal(guaranteeJSON{g.Name, duration.Format(g.Have), duration.Format(g.Need), g.Holds})
}

// UnmarshalJSON implements json.Unmarshaler.
func (g *Guarantee) UnmarshalJSON(b []byte) error {
	var j guaranteeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	have, err := time.ParseDuration(j.Have)
	if err != nil {
		return fmt.Errorf("keys: guarantee %s: %w", j.Name, err)
	}
	need, err := time.ParseDuration(j.Need)
	if err != nil {
		return fmt.Errorf("keys: guarantee %s: %w", j.Name, err)
	}
	*g = Guarantee{Name: j.Name, Have: have, Need: need, Holds: j.Holds}
	return nil
}

// String formats g for status output, e.g.
// "next_published_before_use 720h >= 1h2m: holds".
func (g Guarantee) String() string {
	verdict, op := "holds", ">="
	if !g.Holds {
		verdict, op = "BROKEN", "<"
	}
	return fmt.Sprintf("%s %s %s %s: %s", g.Name, duration.Format(g.Have), op, duration.Format(g.Need), verdict)
}

func newGuarantee(name string, have, need time.Duration) Guarantee {
	return Guarantee{Name: name, Have: have, Need: need, Holds: have >= need}
}

// Guarantees returns the guarantees the configured numbers give. Without
// scheduled rotation a next key is still never used before its publication
// lead has passed, because Rotate refuses unless forced.
func (p Policy) Guarantees() []Guarantee {
	lead := p.publishLead()
	if p.RotationPeriod > 0 {
		lead = p.RotationPeriod
	}
	return []Guarantee{
		newGuarantee("next_published_before_use", lead, p.publishLead()),
		newGuarantee("retired_retention", p.retention(), p.retention()),
	}
}
