package keys

import (
	"fmt"
	"strings"
	"time"
)

// Status summarizes a key set for operators (`tsidp keys list`, the admin
// API).
type Status struct {
	// Version is the store version of the key set.
	Version int64 `json:"version"`
	// Guarantees are those the configured numbers give (Policy.Guarantees).
	Guarantees []Guarantee `json:"guarantees"`
	// Algorithms has one entry per configured algorithm.
	Algorithms []AlgorithmStatus `json:"algorithms"`
}

// AlgorithmStatus describes the keys of one algorithm.
type AlgorithmStatus struct {
	Algorithm Algorithm `json:"algorithm"`
	// Active is the kid of the signing key, ActiveSince when it started and
	// ActivePublished when it entered the JWKS: at least the publication
	// lead earlier after a normal rotation, at the same time for the first
	// key of an algorithm or after a forced rotation.
	Active          string    `json:"active"`
	ActiveSince     time.Time `json:"active_since,omitzero"`
	ActivePublished time.Time `json:"active_published,omitzero"`
	// Next is the kid of the next key, published at NextPublished and
	// allowed to sign from NextSignsFrom.
	Next          string    `json:"next"`
	NextPublished time.Time `json:"next_published,omitzero"`
	NextSignsFrom time.Time `json:"next_signs_from,omitzero"`
	// NextRotation is when scheduled rotation will happen; zero if it is
	// disabled.
	NextRotation time.Time `json:"next_rotation,omitzero"`
	// RotationDue reports whether scheduled rotation is due at the time
	// Status was asked for.
	RotationDue bool `json:"rotation_due"`
	// Retired counts retired keys still published.
	Retired int `json:"retired"`
	// Guarantees as the current keys give them:
	// next_published_before_use is from the next key's publication to the
	// earliest time it will sign without force; retired_retention is the
	// shortest time a retired key stays published after it stopped
	// signing (the policy's, if there are no retired keys).
	Guarantees []Guarantee `json:"guarantees"`
}

// Status reports the key set in use at time now.
func (m *Manager) Status(now time.Time) Status {
	return StatusOf(m.cur.Load().set, m.p, now)
}

// StatusOf reports the status of s under policy p at time now, for tools
// that read a store without running a Manager.
func StatusOf(s *Set, p Policy, now time.Time) Status {
	st := Status{Version: s.Version, Guarantees: p.Guarantees()}
	for _, alg := range p.Algorithms {
		as := AlgorithmStatus{Algorithm: alg}
		lead := p.publishLead()
		if k := s.Active(alg); k != nil {
			as.Active, as.ActiveSince, as.ActivePublished = k.ID, k.Activated, k.Published
		}
		if k := s.Next(alg); k != nil {
			as.Next, as.NextPublished, as.NextSignsFrom = k.ID, k.Published, k.signsFrom(p)
			use := as.NextSignsFrom
			if t, ok := nextRotation(s, alg, p); ok {
				as.NextRotation, as.RotationDue = t, !now.Before(t)
				use = t
			}
			as.Guarantees = append(as.Guarantees, newGuarantee("next_published_before_use", use.Sub(k.Published), lead))
		}
		retention, found := p.retention(), false
		for _, k := range s.Keys {
			if k.Algorithm == alg && k.State == StateRetired {
				as.Retired++
				if d := k.removeAt(p).Sub(k.Retired); !found || d < retention {
					retention, found = d, true
				}
			}
		}
		as.Guarantees = append(as.Guarantees, newGuarantee("retired_retention", retention, p.retention()))
		st.Algorithms = append(st.Algorithms, as)
	}
	return st
}

// String formats s for `tsidp keys status`.
func (s Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "key set version %d\n", s.Version)
	for _, g := range s.Guarantees {
		fmt.Fprintf(&b, "policy: %s\n", g)
	}
	for _, a := range s.Algorithms {
		fmt.Fprintf(&b, "%s: active %s since %s; next %s signs from %s", a.Algorithm, a.Active,
			a.ActiveSince.Format(time.RFC3339), a.Next, a.NextSignsFrom.Format(time.RFC3339))
		if !a.NextRotation.IsZero() {
			fmt.Fprintf(&b, "; scheduled rotation %s", a.NextRotation.Format(time.RFC3339))
		}
		fmt.Fprintf(&b, "; %d retired\n", a.Retired)
		for _, g := range a.Guarantees {
			fmt.Fprintf(&b, "  %s\n", g)
		}
	}
	return b.String()
}
