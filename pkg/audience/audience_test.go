package audience

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/identity"
)

var defaults = Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256", Algorithms: []string{"ES256", "RS256", "EdDSA"}}

var (
	alice = &identity.Identity{Subject: "user:1", LoginName: "alice@example.com", NodeName: "laptop.tail1.ts.net"}
	bob   = &identity.Identity{Subject: "user:2", LoginName: "bob@other.org", NodeName: "desk.tail1.ts.net"}
	ci    = &identity.Identity{Subject: "node:nCI", NodeID: "nCI", NodeName: "build-1.tail1.ts.net", Tagged: true, Tags: []string{"tag:ci"},
		LoginName: "alice@example.com"} // test control reports the registering user for tagged nodes
	// impostor is someone's laptop, shared in from another tailnet, whose
	// owner named it like the build server.
	impostor = &identity.Identity{Subject: "user:3", LoginName: "mallory@evil.example", NodeID: "nEVIL",
		NodeName: "build-1.tail9.ts.net", Tailnet: "tail9.ts.net", Sharee: true}
	// renamed is a laptop of this tailnet that took the build server's name
	// after the build server was decommissioned.
	renamed = &identity.Identity{Subject: "user:2", LoginName: "bob@other.org", NodeID: "nBOB", NodeName: "build-1.tail1.ts.net"}
)

func TestAllowRules(t *testing.T) {
	tests := []struct {
		rule   string
		id     *identity.Identity
		groups []string
		want   bool
	}{
		{"*", alice, nil, true},
		{"*", ci, nil, true},
		{"*@example.com", alice, nil, true},
		{"*@EXAMPLE.com", alice, nil, true},
		{"*@example.com", bob, nil, false},
		{"*@example.com", ci, nil, false}, // tagged devices are not people, whatever login control reports
		{"user:alice@example.com", alice, nil, true},
		{"user:alice@example.com", ci, nil, false},
		{"user:alice@example.com", bob, nil, false},
		{"tag:ci", ci, nil, true},
		{"tag:ci", alice, nil, false},
		{"tag:prod", ci, nil, false},
		{"node:build-1", ci, nil, true},
		{"node:build-1.tail1.ts.net", ci, nil, true},
		{"node:build-1.tail1.ts.net.", ci, nil, true},
		{"node:build", ci, nil, false},
		{"node:BUILD-1.Tail1.TS.net", ci, nil, true},
		{"node:build-1.tail2.ts.net", ci, nil, false},
		{"node:build-1.tail1", ci, nil, false},
		// A bare name matches only nodes of this tailnet: anyone can name
		// a node build-1 in their own tailnet and share it in.
		{"node:build-1", impostor, nil, false},
		{"node:build-1.tail9.ts.net", impostor, nil, true}, // named in full: the operator chose that tailnet
		// Node names are chosen by device owners: a bare or full name rule
		// follows the name, a node ID or tag rule does not.
		{"node:build-1", renamed, nil, true},
		{"nodeid:nCI", ci, nil, true},
		{"nodeid:nCI", renamed, nil, false},
		{"nodeid:nci", ci, nil, false}, // stable IDs are case-sensitive
		{"nodeid:nEVIL", impostor, nil, true},
		{"nodeid:nCI", alice, nil, false}, // alice's identity has no node ID
		{"tag:ci", renamed, nil, false},
		{"group:eng", alice, []string{"eng"}, true},
		{"group:eng", alice, []string{"ops"}, false},
		{"group:eng", alice, nil, false},
	}
	for _, tt := range tests {
		p, err := NewRegistry([]Config{{Name: "api", Allow: []string{tt.rule}}}, defaults)
		if err != nil {
			t.Fatalf("rule %q: %v", tt.rule, err)
		}
		if got := p.Audience("api").Allows(tt.id, tt.groups); got != tt.want {
			t.Errorf("rule %q, caller %s, groups %v: allowed = %v, want %v", tt.rule, tt.id.Subject, tt.groups, got, tt.want)
		}
	}
}

func TestDenyByDefault(t *testing.T) {
	p, err := NewRegistry([]Config{{Name: "api", Allow: []string{"tag:ci"}}}, defaults)
	if err != nil {
		t.Fatal(err)
	}
	if p.Audience("other") != nil {
		t.Error("unconfigured audience exists")
	}
	if p.Audience("api").Allows(alice, nil) {
		t.Error("alice allowed without a matching rule")
	}
	if _, err := NewRegistry([]Config{{Name: "api"}}, defaults); err == nil || !strings.Contains(err.Error(), "allow is empty") {
		t.Errorf("empty allow list accepted: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Allow: []string{"*"}}, "name is required"},
		{Config{Name: " api", Allow: []string{"*"}}, "spaces"},
		{Config{Name: "api", Allow: []string{"alice"}}, `must contain "@"`},
		{Config{Name: "api", Allow: []string{"role:x"}}, "unknown prefix"},
		{Config{Name: "api", Allow: []string{"tag:"}}, "empty after"},
		{Config{Name: "api", Allow: []string{"node:."}}, "empty after"},
		{Config{Name: "api", Allow: []string{"nodeid:"}}, "empty after"},
		{Config{Name: "api", Allow: []string{"[@x"}}, "malformed glob"},
		{Config{Name: "api", Allow: []string{"*"}, TTL: time.Second}, "shorter than"},
		{Config{Name: "api", Allow: []string{"*"}, TTL: 2 * time.Hour, MaxTTL: time.Hour}, "longer than max_ttl"},
		{Config{Name: "api", Allow: []string{"*"}, MaxTTL: 48 * time.Hour}, "tokens.max_ttl"},
		{Config{Name: "api", Allow: []string{"*"}, Algorithm: "HS256"}, "not one of"},
		{Config{Name: "api", Allow: []string{"*"}, Scopes: []string{"a b"}}, "scope"},
	}
	for _, tt := range tests {
		_, err := NewRegistry([]Config{tt.cfg}, defaults)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want containing %q", tt.cfg, err, tt.want)
		}
	}
	_, err := NewRegistry([]Config{{Name: "a", Allow: []string{"*"}}, {Name: "a", Allow: []string{"*"}}}, defaults)
	if err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate audience: %v", err)
	}
}

func TestTTLFor(t *testing.T) {
	p, err := NewRegistry([]Config{{Name: "api", Allow: []string{"*"}, TTL: 15 * time.Minute, MaxTTL: time.Hour}}, defaults)
	if err != nil {
		t.Fatal(err)
	}
	a := p.Audience("api")
	tests := []struct {
		req, limit, want time.Duration
		err              error
	}{
		{0, 0, 15 * time.Minute, nil},
		{30 * time.Minute, 0, 30 * time.Minute, nil},
		{5 * time.Hour, 0, time.Hour, nil}, // clamped to max_ttl
		{0, 5 * time.Minute, 5 * time.Minute, nil},
		{time.Hour, 10 * time.Minute, 10 * time.Minute, nil},
		{time.Second, 0, 0, ErrBadTTL},
		{0, MinTTL, MinTTL, nil},
		{0, MinTTL - time.Nanosecond, 0, ErrCappedBelowMin},
		{0, time.Second, 0, ErrCappedBelowMin},
		{time.Hour, time.Second, 0, ErrCappedBelowMin},
	}
	for _, tt := range tests {
		got, err := a.TTLFor(tt.req, tt.limit)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("TTLFor(%v, %v) = %v, %v; want %v, %v", tt.req, tt.limit, got, err, tt.want, tt.err)
		}
	}
	if got := p.MaxTTL(); got != time.Hour {
		t.Errorf("MaxTTL = %v", got)
	}
}

func TestDefaultsInherited(t *testing.T) {
	p, err := NewRegistry([]Config{{Name: "api", Allow: []string{"*"}}}, Defaults{TTL: 2 * time.Hour, MaxTTL: time.Hour, Algorithm: "EdDSA"})
	if err != nil {
		t.Fatal(err)
	}
	a := p.Audience("api")
	if a.TTL != time.Hour || a.MaxTTL != time.Hour || a.Algorithm != "EdDSA" {
		t.Errorf("audience = %+v", a)
	}
}
