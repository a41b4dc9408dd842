package keys

import (
	"fmt"
	"strings"
	"time"
)

// Status summarizes a Manager's key set for operators.
type Status struct {
	// Version is the store version of the key set in use.
	Version int64
	// Guarantees are those the configured numbers give (Policy.Guarantees).
	Guarantees []Guarantee
	// Algorithms has one entry per configured algorithm.
	Algorithms []AlgorithmStatus
}

// AlgorithmStatus describes the keys of one algorithm.
type AlgorithmStatus struct {
	Algorithm Algorithm
	// Active is the kid of the signing key, ActiveSince when it started.
	Active      string
	ActiveSince time.Time
	// ActivePublishedBeforeUse is how long the active key was in the JWKS
	// before it signed: at least the publication lead after a normal
	// rotation, 0 for the first key of an algorithm or a forced rotation.
	ActivePublishedBeforeUse time.Duration
	// Next is the kid of the next key, published at NextPublished and
	// allowed to sign from NextSignsFrom.
	Next          string
	NextPublished time.Time
	NextSignsFrom time.Time
	// NextRotation is when scheduled rotation will happen; zero if it is
	// disabled.
	NextRotation time.Time
	// RotationDue reports whether scheduled rotation is due at the time
	// Status was asked for.
	RotationDue bool
	// Retired counts retired keys still published.
	Retired int
	// Guarantees as the current keys give them:
	// next_published_before_use is from the next key's publication to the
	// earliest time it will sign without force; retired_retention is the
	// shortest time a retired key stays published after it stopped
	// signing (the policy's, if there are no retired keys).
	Guarantees []Guarantee
}

// Status reports the key set in use at time now.
func (m *Manager) Status(now time.Time) Status {
	return statusOf(m.cur.Load().set, m.p, now)
}

func statusOf(s *Set, p Policy, now time.Time) Status {
	st := Status{Version: s.Version, Guarantees: p.Guarantees()}
	for _, alg := range p.Algorithms {
		as := AlgorithmStatus{Algorithm: alg}
		lead := p.publishLead()
		if k := s.Active(alg); k != nil {
			as.Active, as.ActiveSince = k.ID, k.Activated
			as.ActivePublishedBeforeUse = max(0, k.Activated.Sub(k.Published))
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
