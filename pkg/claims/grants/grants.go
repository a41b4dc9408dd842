// Package grants reads tsidp rules from the tailnet policy file: the caller's
// peer capabilities under one capability name may grant audiences, add
// claims and cap token lifetimes. Control computes them per caller from
// "grants" in the policy file and tailscaled reports them in WhoIs.
//
// A policy file entry looks like:
//
//	"grants": [{
//	  "src": ["group:eng"], "dst": ["tag:tsidp"],
//	  "app": {"example.com/cap/tsidp": [
//	    {"audiences": ["https://api.example.com"], "claims": {"groups": ["eng"]}, "max_ttl": "1h"}
//	  ]}
//	}]
package grants

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
)

// Rule is one capability value.
type Rule struct {
	// Audiences lists the audiences the rule applies to, and grants them.
	// Empty: the rule applies to every audience and grants none.
	Audiences []string `json:"audiences"`
	// Claims are extra claims for tokens the rule applies to.
	Claims map[string]json.RawMessage `json:"claims"`
	// MaxTTL caps the lifetime of tokens the rule applies to, as a Go
	// duration ("15m") of at least audience.MinTTL. A rule with any other
	// value is refused whole.
	MaxTTL string `json:"max_ttl"`
}

// Enricher turns peer capabilities into claims.Result.
type Enricher struct {
	capability tailcfg.PeerCapability
	logf       logger.Logf
}

var _ claims.AudienceGranter = (*Enricher)(nil)

// GrantsAudiences implements claims.AudienceGranter.
func (e *Enricher) GrantsAudiences() {}

// New returns an enricher reading capability name capName. Its log lines
// are rate limited: a bad rule in the policy file is seen on every request
// of the callers it applies to.
func New(capName string, logf logger.Logf) *Enricher {
	if logf == nil {
		logf = logger.Discard
	}
	return &Enricher{capability: tailcfg.PeerCapability(capName), logf: logger.RateLimitedFn(logf, time.Minute, 10, 100)}
}

// Name implements claims.Enricher.
func (e *Enricher) Name() string { return "tailnet-grants" }

// Enrich implements claims.Enricher. Rules are applied in the byte order of
// their JSON so the result does not depend on the order control sent them
// in; malformed rules and reserved claims are skipped with a log line.
func (e *Enricher) Enrich(_ context.Context, req *claims.Request) (*claims.Result, error) {
	raw := req.Identity.Caps[e.capability]
	if len(raw) == 0 {
		return nil, nil
	}
	vals := slices.Clone(raw)
	slices.SortFunc(vals, func(a, b tailcfg.RawMessage) int { return bytes.Compare([]byte(a), []byte(b)) })
	res := new(claims.Result)
	for _, v := range vals {
		var r Rule
		dec := json.NewDecoder(bytes.NewReader([]byte(v)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			e.logf("grants: %s: ignoring malformed rule for %s: %v", e.capability, req.Identity.Subject, err)
			continue
		}
		var maxTTL time.Duration
		if r.MaxTTL != "" {
			// A rule is applied whole or not at all: without its cap, it
			// could grant longer tokens than the policy author meant.
			d, err := time.ParseDuration(r.MaxTTL)
			if err != nil || d < audience.MinTTL {
				e.logf("grants: %s: ignoring rule for %s: max_ttl %q is not a duration of at least %v", e.capability, req.Identity.Subject, r.MaxTTL, audience.MinTTL)
				continue
			}
			maxTTL = d
		}
		if len(r.Audiences) > 0 && !slices.Contains(r.Audiences, req.Audience) {
			continue
		}
		if len(r.Audiences) > 0 {
			res.Audiences = append(res.Audiences, req.Audience)
		}
		if maxTTL > 0 && (res.MaxTTL == 0 || maxTTL < res.MaxTTL) {
			res.MaxTTL = maxTTL
		}
		names := make([]string, 0, len(r.Claims))
		for name := range r.Claims {
			names = append(names, name)
		}
		slices.Sort(names)
		add := make([]claims.Claim, 0, len(names))
		for _, name := range names {
			c := claims.Claim{Name: name, Value: r.Claims[name]}
			if err := c.Validate(nil); err != nil {
				e.logf("grants: %s: refusing claim for %s: %v", e.capability, req.Identity.Subject, err)
				continue
			}
			add = append(add, c)
		}
		res.Claims = claims.Merge(res.Claims, add)
	}
	return res, nil
}

// String describes the enricher for logs.
func (e *Enricher) String() string { return fmt.Sprintf("tailnet grants (%s)", e.capability) }
