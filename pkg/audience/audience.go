// Package audience holds the audiences tsidp issues tokens for (the
// registry of resources) and decides which callers may get a token for
// which of them, and for how long. It denies by default: an audience nobody
// configured does not exist, and an audience without a matching allow rule
// refuses everyone.
package audience

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/tsidp/tsidp/pkg/identity"
)

// Config is one audience as written in the configuration file.
type Config struct {
	// Name is the token's "aud" value and what callers ask for
	// (form field "audience" or "resource").
	Name string `yaml:"name"`
	// Allow lists who may get a token. Forms:
	//   "*"                   everyone on the tailnet (people and tagged devices)
	//   "*@example.com"       people whose login matches the glob
	//   "user:alice@example.com" one person, by login
	//   "tag:ci"              tagged devices carrying the tag
	//   "node:build-1.tail1234.ts.net"
	//                         one node, by full MagicDNS name
	//   "node:build-1"        one node of this tailnet (not a sharee), by
	//                         the first label of its MagicDNS name
	//   "nodeid:nXXXXCNTRL"   one node, by stable node ID
	//   "group:eng"           callers whose "groups" claim (from plugins or
	//                         tailnet grants) contains "eng"
	Allow []string `yaml:"allow"`
	// TTL is the lifetime of a token when the caller does not ask for one.
	// Default: tokens.default_ttl.
	TTL time.Duration `yaml:"ttl"`
	// MaxTTL caps what a caller may ask for. Default: tokens.max_ttl.
	MaxTTL time.Duration `yaml:"max_ttl"`
	// Algorithm signs this audience's tokens. Default: tokens.algorithm.
	Algorithm string `yaml:"algorithm"`
	// Scopes lists the scope values a caller may request. Requests for any
	// other scope are refused.
	Scopes []string `yaml:"scopes"`
	// TokenProfile is "jwt" (the default: "typ": "JWT") or "rfc9068":
	// tokens follow the JWT access token profile (RFC 9068: "typ":
	// "at+jwt" and a client_id claim naming the caller's node), for
	// resource servers whose validators insist on it.
	TokenProfile string `yaml:"token_profile"`
}

// Token profiles.
const (
	ProfileJWT     = "jwt"
	ProfileRFC9068 = "rfc9068"
)

// Defaults are the token settings audiences inherit.
type Defaults struct {
	TTL        time.Duration
	MaxTTL     time.Duration
	Algorithm  string
	Algorithms []string // algorithms the key set publishes
}

// MinTTL is the shortest token lifetime tsidp issues or accepts in config.
const MinTTL = 10 * time.Second

// Audience is a validated audience.
type Audience struct {
	Name      string
	TTL       time.Duration
	MaxTTL    time.Duration
	Algorithm string
	Scopes    []string
	// Profile is ProfileJWT or ProfileRFC9068.
	Profile string
	rules   Rules
}

// Registry is the validated set of audiences.
type Registry struct {
	byName map[string]*Audience
	names  []string
}

// NewRegistry validates cfgs against defaults and returns the registry.
func NewRegistry(cfgs []Config, d Defaults) (*Registry, error) {
	p := &Registry{byName: make(map[string]*Audience, len(cfgs))}
	for i, c := range cfgs {
		a, err := compile(c, d)
		if err != nil {
			if c.Name == "" {
				return nil, fmt.Errorf("audiences[%d]: %w", i, err)
			}
			return nil, fmt.Errorf("audience %q: %w", c.Name, err)
		}
		if _, dup := p.byName[a.Name]; dup {
			return nil, fmt.Errorf("audience %q is configured twice", a.Name)
		}
		p.byName[a.Name] = a
		p.names = append(p.names, a.Name)
	}
	return p, nil
}

// Audience returns the audience named name, or nil.
func (p *Registry) Audience(name string) *Audience { return p.byName[name] }

// Names returns the configured audience names in configuration order.
func (p *Registry) Names() []string { return p.names }

// MaxTTL returns the longest lifetime any audience can issue.
func (p *Registry) MaxTTL() time.Duration {
	var m time.Duration
	for _, a := range p.byName {
		m = max(m, a.MaxTTL)
	}
	return m
}

// Allows reports whether the caller may get a token for a. groups is the
// caller's "groups" claim as enrichers returned it.
func (a *Audience) Allows(id *identity.Identity, groups []string) bool {
	_, ok := a.rules.Match(id, groups)
	return ok
}

// Match returns the first allow rule of a that admits the caller, as
// written in the configuration, and whether there is one.
func (a *Audience) Match(id *identity.Identity, groups []string) (rule string, ok bool) {
	return a.rules.Match(id, groups)
}

// Rules returns a's allow rules.
func (a *Audience) Rules() Rules { return a.rules }

// UsesGroups reports whether any allow rule needs the "groups" claim, so the
// server can skip a pre-check that would wrongly refuse group members.
func (a *Audience) UsesGroups() bool { return a.rules.UsesGroups() }

// Rules is a list of allow rules, in the syntax of an audience's allow
// list. Clients of the OpenID Provider use it too, for who may log in and
// which tailnet identities authenticate a secretless client.
type Rules []rule

// ParseRules parses allow rules; an empty list is an error (deny is the
// default: say who may).
func ParseRules(list []string) (Rules, error) {
	if len(list) == 0 {
		return nil, errors.New("allow is empty: nobody could get a token (deny is the default; list who may)")
	}
	rs := make(Rules, 0, len(list))
	for _, s := range list {
		r, err := parseRule(s)
		if err != nil {
			return nil, err
		}
		r.src = s
		rs = append(rs, r)
	}
	return rs, nil
}

// Match returns the first rule that admits the caller, as written, and
// whether there is one. groups is the caller's "groups" claim.
func (rs Rules) Match(id *identity.Identity, groups []string) (rule string, ok bool) {
	for _, r := range rs {
		if r.match(id, groups) {
			return r.src, true
		}
	}
	return "", false
}

// UsesGroups reports whether a rule needs the "groups" claim.
func (rs Rules) UsesGroups() bool {
	return slices.ContainsFunc(rs, func(r rule) bool { return r.kind == ruleGroup })
}

// Strings returns the rules as written.
func (rs Rules) Strings() []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.src
	}
	return out
}

// ErrBadTTL is returned by TTLFor for a requested lifetime below MinTTL.
var ErrBadTTL = errors.New("ttl must be at least 10s")

// ErrCappedBelowMin is returned by TTLFor when limit is below MinTTL: no
// token is issued rather than one that expires as it is issued.
var ErrCappedBelowMin = errors.New("the token lifetime was capped below the minimum of 10s")

// TTLFor returns the lifetime of a token: requested (zero for the default),
// clamped to the audience's maximum and to limit (if non-zero; enrichers may
// lower it). The result is what the token's exp and expires_in say, and is
// never below MinTTL.
func (a *Audience) TTLFor(requested, limit time.Duration) (time.Duration, error) {
	if limit > 0 && limit < MinTTL {
		return 0, ErrCappedBelowMin
	}
	ttl := a.TTL
	if requested != 0 {
		if requested < MinTTL {
			return 0, ErrBadTTL
		}
		ttl = requested
	}
	ttl = min(ttl, a.MaxTTL)
	if limit > 0 {
		ttl = min(ttl, limit)
	}
	return ttl, nil
}

// ScopeAllowed reports whether a may be asked for scope s.
func (a *Audience) ScopeAllowed(s string) bool { return slices.Contains(a.Scopes, s) }

func compile(c Config, d Defaults) (*Audience, error) {
	if strings.TrimSpace(c.Name) == "" {
		return nil, errors.New("name is required")
	}
	if c.Name != strings.TrimSpace(c.Name) {
		return nil, errors.New("name has leading or trailing spaces")
	}
	a := &Audience{
		Name:      c.Name,
		TTL:       c.TTL,
		MaxTTL:    c.MaxTTL,
		Algorithm: c.Algorithm,
		Scopes:    c.Scopes,
		Profile:   c.TokenProfile,
	}
	switch a.Profile {
	case "":
		a.Profile = ProfileJWT
	case ProfileJWT, ProfileRFC9068:
	default:
		return nil, fmt.Errorf("token_profile %q: want %q or %q", a.Profile, ProfileJWT, ProfileRFC9068)
	}
	if a.MaxTTL == 0 {
		a.MaxTTL = d.MaxTTL
	}
	if a.TTL == 0 {
		a.TTL = min(d.TTL, a.MaxTTL)
	}
	if a.Algorithm == "" {
		a.Algorithm = d.Algorithm
	}
	switch {
	case a.TTL < MinTTL:
		return nil, fmt.Errorf("ttl %v is shorter than %v", a.TTL, MinTTL)
	case a.MaxTTL < a.TTL:
		return nil, fmt.Errorf("ttl %v is longer than max_ttl %v", a.TTL, a.MaxTTL)
	case d.MaxTTL > 0 && a.MaxTTL > d.MaxTTL:
		return nil, fmt.Errorf("max_ttl %v is longer than tokens.max_ttl %v", a.MaxTTL, d.MaxTTL)
	case len(d.Algorithms) > 0 && !slices.Contains(d.Algorithms, a.Algorithm):
		return nil, fmt.Errorf("algorithm %q is not one of keys.algorithms %v", a.Algorithm, d.Algorithms)
	}
	for _, s := range a.Scopes {
		if s == "" || strings.ContainsAny(s, " \"\\") {
			return nil, fmt.Errorf("scope %q is not a valid scope token", s)
		}
	}
	rules, err := ParseRules(c.Allow)
	if err != nil {
		return nil, err
	}
	a.rules = rules
	return a, nil
}

type ruleKind int

const (
	ruleAll ruleKind = iota
	ruleLoginGlob
	ruleUser
	ruleTag
	ruleNode     // full MagicDNS name
	ruleHostName // first label of the MagicDNS name, own tailnet only
	ruleNodeID
	ruleGroup
)

type rule struct {
	kind ruleKind
	arg  string
	src  string // as written
}

func parseRule(s string) (rule, error) {
	bad := func(why string) (rule, error) { return rule{}, fmt.Errorf("allow rule %q: %s", s, why) }
	if s == "*" {
		return rule{kind: ruleAll}, nil
	}
	prefix, arg, hasPrefix := strings.Cut(s, ":")
	if hasPrefix && !strings.Contains(prefix, "@") {
		if arg == "" {
			return bad("empty after the prefix")
		}
		switch prefix {
		case "user":
			return rule{kind: ruleUser, arg: strings.ToLower(arg)}, nil
		case "tag":
			return rule{kind: ruleTag, arg: s}, nil // tags are compared whole, "tag:x"
		case "node":
			name := strings.ToLower(strings.TrimSuffix(arg, "."))
			if name == "" {
				return bad("empty after the prefix")
			}
			if strings.Contains(name, ".") {
				return rule{kind: ruleNode, arg: name}, nil
			}
			return rule{kind: ruleHostName, arg: name}, nil
		case "nodeid":
			return rule{kind: ruleNodeID, arg: arg}, nil // stable IDs are compared exactly
		case "group":
			return rule{kind: ruleGroup, arg: arg}, nil
		default:
			return bad(`unknown prefix; use "*", a login glob like "*@example.com", "user:", "tag:", "node:", "nodeid:" or "group:"`)
		}
	}
	if !strings.Contains(s, "@") {
		return bad(`a login glob must contain "@" (e.g. "*@example.com"); for everyone use "*"`)
	}
	if _, err := path.Match(s, ""); err != nil {
		return bad("malformed glob")
	}
	return rule{kind: ruleLoginGlob, arg: strings.ToLower(s)}, nil
}

func (r rule) match(id *identity.Identity, groups []string) bool {
	switch r.kind {
	case ruleAll:
		return true
	case ruleLoginGlob:
		if id.Tagged {
			return false
		}
		ok, _ := path.Match(r.arg, strings.ToLower(id.LoginName))
		return ok
	case ruleUser:
		return !id.Tagged && strings.EqualFold(id.LoginName, r.arg)
	case ruleTag:
		return id.Tagged && slices.Contains(id.Tags, r.arg)
	case ruleNode:
		return strings.EqualFold(id.NodeName, r.arg)
	case ruleHostName:
		// A bare name is only unambiguous within this tailnet: a node
		// shared in from another tailnet can carry any host name.
		return !id.Sharee && strings.EqualFold(id.HostName(), r.arg)
	case ruleNodeID:
		return id.NodeID != "" && id.NodeID == r.arg
	case ruleGroup:
		return slices.Contains(groups, r.arg)
	}
	return false
}
