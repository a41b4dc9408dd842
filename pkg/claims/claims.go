// Package claims builds the claim set of a token: the registered and identity
// claims tsidp owns, plus extra claims from enrichers (tailnet grants and
// plugins), merged in a fixed order.
package claims

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tsidp/tsidp/pkg/identity"
)

// reserved lists the claims only tsidp sets. Enrichers may never set them:
// a plugin that could set "sub" or "email" could impersonate anyone. It is
// unexported so that no package can add to or remove from it at run time;
// IsReserved reads it.
var reserved = map[string]bool{
	// RFC 7519 registered claims.
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true, "jti": true,
	// OAuth/OIDC claims whose meaning verifiers rely on.
	"scope": true, "client_id": true, "azp": true, "nonce": true, "auth_time": true, "acr": true, "amr": true,
	"sid": true, "at_hash": true, "c_hash": true,
	"cnf": true, "act": true, "may_act": true,
	// Identity claims derived from WhoIs.
	"email": true, "email_verified": true, "name": true, "picture": true, "preferred_username": true,
	"login_name": true, "user_id": true, "tailnet": true, "node": true, "node_id": true, "tags": true,
	"tagged": true,
}

// IsReserved reports whether name is a claim only tsidp may set.
func IsReserved(name string) bool { return reserved[name] }

// MaxClaimBytes bounds one extra claim's JSON value.
const MaxClaimBytes = 8 << 10

// MaxExtraBytes bounds all extra claims of one token together.
const MaxExtraBytes = 32 << 10

// Claim is one extra claim: a name and its JSON value.
type Claim struct {
	Name  string
	Value json.RawMessage
}

// Request is what an Enricher is asked about.
type Request struct {
	Identity *identity.Identity
	Audience string
	Scopes   []string
}

// Result is an Enricher's answer.
type Result struct {
	// Deny refuses the token; Reason says why (logged, and shown to the
	// caller as the error description).
	Deny   bool
	Reason string
	// Claims are extra claims to add.
	Claims []Claim
	// Audiences are extra audiences this caller is granted (tailnet grants).
	Audiences []string
	// MaxTTL, if non-zero, caps the token lifetime.
	MaxTTL time.Duration
}

// Enricher adds claims for a caller and audience. Tailnet grants and plugins
// (built-in or external) all implement it, so the request path has one code
// path for every source of claims.
type Enricher interface {
	// Name identifies the enricher in logs, errors and /readyz.
	Name() string
	// Enrich answers for one caller and audience. An error means the
	// enricher could not answer; the caller applies the enricher's on-error
	// policy.
	Enrich(ctx context.Context, req *Request) (*Result, error)
}

// AudienceGranter is implemented by enrichers whose results may grant
// audiences (Result.Audiences), such as tailnet grants; no other enricher's
// Audiences are honoured. A caller that no allow rule admits, for an audience
// whose rules do not depend on groups, can only get a token through one of
// them, so the server asks only them before refusing: other enrichers
// (plugins doing directory lookups) never see callers that will be refused.
type AudienceGranter interface {
	Enricher
	// GrantsAudiences marks the enricher; it does nothing.
	GrantsAudiences()
}

// Validate checks a claim an enricher returned: a legal, non-reserved name and
// a bounded, syntactically valid JSON value. Both must be valid UTF-8: the
// value is copied verbatim into the token, and strict verifiers (RFC 8259
// §8.1) reject a payload that is not. allowed, if non-nil, is the set of
// names the enricher declared.
func (c Claim) Validate(allowed map[string]bool) error {
	switch {
	case c.Name == "":
		return fmt.Errorf("empty claim name")
	case len(c.Name) > 128 || strings.ContainsAny(c.Name, "\"\\\x00") || !utf8.ValidString(c.Name):
		return fmt.Errorf("claim name %.40q is not allowed", c.Name)
	case IsReserved(c.Name):
		return fmt.Errorf("claim %q is reserved", c.Name)
	case allowed != nil && !allowed[c.Name]:
		return fmt.Errorf("claim %q was not declared", c.Name)
	case len(c.Value) > MaxClaimBytes:
		return fmt.Errorf("claim %q is %d bytes, over the %d-byte limit", c.Name, len(c.Value), MaxClaimBytes)
	case !utf8.Valid(c.Value):
		// json.Valid accepts invalid UTF-8 inside strings.
		return fmt.Errorf("claim %q is not valid UTF-8", c.Name)
	case !json.Valid(c.Value):
		return fmt.Errorf("claim %q is not valid JSON", c.Name)
	}
	return nil
}

// Merge folds src into dst deterministically and returns the result sorted
// by name. When both hold a claim: two JSON arrays are united (dst's elements
// first, then src's new ones, duplicates dropped); otherwise src wins. Call it
// in a fixed order (grants, then plugins in configuration order) so the same
// inputs always produce the same token.
func Merge(dst, src []Claim) []Claim {
	for _, c := range src {
		i := slices.IndexFunc(dst, func(d Claim) bool { return d.Name == c.Name })
		if i < 0 {
			dst = append(dst, c)
			continue
		}
		if u, ok := unionArrays(dst[i].Value, c.Value); ok {
			dst[i].Value = u
		} else {
			dst[i].Value = c.Value
		}
	}
	sort.SliceStable(dst, func(i, j int) bool { return dst[i].Name < dst[j].Name })
	return dst
}

func unionArrays(a, b json.RawMessage) (json.RawMessage, bool) {
	a, b = bytes.TrimSpace(a), bytes.TrimSpace(b)
	if len(a) == 0 || len(b) == 0 || a[0] != '[' || b[0] != '[' {
		return nil, false
	}
	var xs, ys []json.RawMessage
	if json.Unmarshal(a, &xs) != nil || json.Unmarshal(b, &ys) != nil {
		return nil, false
	}
	seen := make(map[string]bool, len(xs)+len(ys))
	out := make([]json.RawMessage, 0, len(xs)+len(ys))
	for _, v := range append(xs, ys...) {
		k := string(v)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, v)
	}
	u, err := json.Marshal(out)
	if err != nil {
		return nil, false
	}
	return u, true
}

// Strings decodes the claim named name from cs as a list of strings (a single
// string counts as a list of one). It returns nil if absent or of another type.
func Strings(cs []Claim, name string) []string {
	for _, c := range cs {
		if c.Name != name {
			continue
		}
		var list []string
		if json.Unmarshal(c.Value, &list) == nil {
			return list
		}
		var one string
		if json.Unmarshal(c.Value, &one) == nil {
			return []string{one}
		}
		return nil
	}
	return nil
}
