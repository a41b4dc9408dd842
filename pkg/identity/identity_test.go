package identity

import (
	"errors"
	"strings"
	"testing"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/tailcfg"
)

// These tests build WhoIs answers by hand for cases a test control server
// cannot produce (sharees, production's "tagged-devices" user, malformed
// answers). Real WhoIs answers are covered in pkg/tailnet and integration/.

func whois(name string, tags []string, sharer tailcfg.UserID, up *tailcfg.UserProfile) *apitype.WhoIsResponse {
	return &apitype.WhoIsResponse{
		Node:        &tailcfg.Node{Name: name, StableID: "nSTABLE", Tags: tags, Sharer: sharer},
		UserProfile: up,
	}
}

var alice = &tailcfg.UserProfile{ID: 7, LoginName: "alice@example.com", DisplayName: "Alice", ProfilePicURL: "https://p/a.png"}

func TestFromWhoIsPerson(t *testing.T) {
	id, err := FromWhoIs(whois("laptop.tail1.ts.net.", nil, 0, alice), "tail1.ts.net")
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "user:7" || id.UserID != "7" || id.LoginName != "alice@example.com" || id.DisplayName != "Alice" ||
		id.NodeName != "laptop.tail1.ts.net" || id.Tailnet != "tail1.ts.net" || id.NodeID != "nSTABLE" || id.Tagged || id.Sharee {
		t.Errorf("identity = %+v", id)
	}
	if id.HostName() != "laptop" {
		t.Errorf("HostName = %q", id.HostName())
	}
}

func TestFromWhoIsTagged(t *testing.T) {
	// Production control reports the user "tagged-devices"; test control
	// reports whoever registered the node. Either way the node is the subject.
	for _, up := range []*tailcfg.UserProfile{
		{ID: 123, LoginName: "tagged-devices", DisplayName: "Tagged Devices"},
		alice,
		nil,
	} {
		id, err := FromWhoIs(whois("ci.tail1.ts.net.", []string{"tag:ci"}, 0, up), "tail1.ts.net")
		if err != nil {
			t.Fatal(err)
		}
		if !id.Tagged || id.Subject != "node:nSTABLE" || id.LoginName != "" || id.UserID != "" || len(id.Tags) != 1 {
			t.Errorf("tagged identity (user %v) = %+v", up, id)
		}
	}
}

func TestFromWhoIsSharee(t *testing.T) {
	id, err := FromWhoIs(whois("phone.other.ts.net.", nil, 0, alice), "tail1.ts.net")
	if err != nil || !id.Sharee || id.Tailnet != "other.ts.net" {
		t.Errorf("other-tailnet node: %+v, %v", id, err)
	}
	id, err = FromWhoIs(whois("phone.tail1.ts.net.", nil, 99, alice), "tail1.ts.net")
	if err != nil || !id.Sharee {
		t.Errorf("shared node: %+v, %v", id, err)
	}
	if err := (Rules{}).Check(id); err == nil {
		t.Error("sharee accepted by default")
	}
	if err := (Rules{AllowSharees: true}).Check(id); err != nil {
		t.Errorf("sharee refused with allow_sharees: %v", err)
	}
}

func TestFromWhoIsMalformed(t *testing.T) {
	if _, err := FromWhoIs(&apitype.WhoIsResponse{}, ""); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("no node: %v", err)
	}
	if _, err := FromWhoIs(whois("x.t.", nil, 0, nil), ""); !errors.Is(err, ErrUnavailable) {
		t.Errorf("untagged without user: %v", err)
	}
	w := whois("x.t.", nil, 0, alice)
	w.Node.StableID = ""
	if _, err := FromWhoIs(w, ""); !errors.Is(err, ErrUnavailable) {
		t.Errorf("no stable id: %v", err)
	}
}

func TestRulesTailnet(t *testing.T) {
	id := &Identity{Tailnet: "tail1.ts.net"}
	if err := (Rules{Tailnet: "TAIL1.ts.net"}).Check(id); err != nil {
		t.Errorf("same tailnet refused: %v", err)
	}
	err := (Rules{Tailnet: "corp.ts.net"}).Check(id)
	var de *DeniedError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "corp.ts.net") {
		t.Errorf("other tailnet: %v", err)
	}
}

// TestFromWhoIsExpired: a node whose key expired (or that logged out) is
// no node of the tailnet any more. (testcontrol cannot expire a key on
// demand, so this is the unit-level check.)
func TestFromWhoIsExpired(t *testing.T) {
	w := whois("laptop.tail1.ts.net.", nil, 0, alice)
	w.Node.Expired = true
	if id, err := FromWhoIs(w, "tail1.ts.net"); !errors.Is(err, ErrUnknownPeer) || id != nil {
		t.Errorf("expired node: %+v, %v; want ErrUnknownPeer", id, err)
	}
	w = whois("laptop.tail1.ts.net.", nil, 0, alice)
	w.Node.KeyExpiry = time.Now().Add(-time.Minute)
	if id, err := FromWhoIs(w, "tail1.ts.net"); !errors.Is(err, ErrUnknownPeer) || id != nil {
		t.Errorf("node whose key expiry passed: %+v, %v; want ErrUnknownPeer", id, err)
	}
	w.Node.KeyExpiry = time.Now().Add(time.Hour)
	if _, err := FromWhoIs(w, "tail1.ts.net"); err != nil {
		t.Errorf("node whose key expires later: %v", err)
	}
}
