// Package identity turns the peer of a tailnet connection into an Identity,
// using tailscaled's WhoIs as the only source of truth.
//
// A Source never looks at HTTP headers: the only input is the TCP peer address
// of the connection, which tailscaled (or the embedded tsnet node) vouches for.
package identity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/tailcfg"
)

// Identity is who is on the other end of a tailnet connection.
//
// A person's device carries user fields; a tagged device carries Tags and no
// user fields (its "owner" is the tags, not whoever registered it).
type Identity struct {
	// Subject is the stable, never-reused subject: "user:<UserID>" for a
	// person and "node:<StableNodeID>" for a tagged device.
	Subject string

	// UserID is the stable Tailscale user ID in decimal; empty for tagged devices.
	UserID string
	// LoginName is the user's login, e.g. "alice@example.com"; empty for
	// tagged devices.
	LoginName string
	// DisplayName is the user's display name; empty for tagged devices.
	DisplayName string
	// ProfilePicURL is the user's picture URL, if any.
	ProfilePicURL string

	// NodeName is the node's MagicDNS name without the trailing dot,
	// e.g. "laptop.tail1234.ts.net".
	NodeName string
	// NodeID is the node's stable ID, e.g. "nXXXXCNTRL".
	NodeID string
	// Tailnet is the tailnet the node belongs to, taken from its MagicDNS
	// name, e.g. "tail1234.ts.net".
	Tailnet string
	// Addresses are the node's tailnet addresses.
	Addresses []netip.Prefix

	// Tags are the node's ACL tags, sorted as control sent them.
	Tags []string
	// Tagged reports whether the node is a tagged device.
	Tagged bool
	// Sharee reports whether the node was shared into this tailnet from
	// another one (or belongs to a different tailnet than tsidp's own).
	Sharee bool

	// Caps are the peer capabilities the tailnet policy grants this caller
	// towards tsidp's node (tailnet "grants"), keyed by capability name.
	Caps tailcfg.PeerCapMap
}

// HostName returns the first label of the node name ("laptop" for
// "laptop.tail1234.ts.net").
func (id *Identity) HostName() string {
	h, _, _ := strings.Cut(id.NodeName, ".")
	return h
}

// Source resolves the identity of a connection's peer.
//
// Implementations return an error wrapping ErrUnknownPeer when the peer is not
// a tailnet node, ErrUnavailable when the backend cannot answer (tailscaled
// down or not Running), and a *DeniedError when the peer is known but refused
// by the identity rules. They never return an Identity together with an error.
type Source interface {
	Identify(ctx context.Context, peer netip.AddrPort) (*Identity, error)
}

// Checker is implemented by sources that can report readiness without a peer.
type Checker interface {
	// Ready returns nil when the backend can currently answer Identify.
	Ready(ctx context.Context) error
}

var (
	// ErrUnknownPeer means the peer is not a node of the tailnet.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrUnavailable means the identity backend cannot answer right now.
	ErrUnavailable = errors.New("identity backend unavailable")
)

// DeniedError reports a known peer that the identity rules refuse.
type DeniedError struct {
	Reason string
}

func (e *DeniedError) Error() string { return "identity denied: " + e.Reason }

// Rules are the identity-level checks applied to every caller before any
// audience policy.
type Rules struct {
	// Tailnet, if set, is the only tailnet whose callers are accepted
	// (compared with Identity.Tailnet, case-insensitively).
	Tailnet string `yaml:"tailnet"`
	// AllowSharees accepts nodes shared in from other tailnets.
	AllowSharees bool `yaml:"allow_sharees"`
}

// Check applies the rules to id.
func (r Rules) Check(id *Identity) error {
	if r.Tailnet != "" && !strings.EqualFold(id.Tailnet, r.Tailnet) {
		return &DeniedError{Reason: fmt.Sprintf("caller is in tailnet %q, not %q", id.Tailnet, r.Tailnet)}
	}
	if id.Sharee && !r.AllowSharees {
		return &DeniedError{Reason: "caller's node is shared in from another tailnet"}
	}
	return nil
}

// FromWhoIs converts a WhoIs answer into an Identity. ownTailnet is the tailnet
// of the node tsidp runs on ("" if unknown); a caller from any other tailnet,
// or a node shared by a user other than its owner, is marked as a sharee.
func FromWhoIs(who *apitype.WhoIsResponse, ownTailnet string) (*Identity, error) {
	if who == nil || who.Node == nil {
		return nil, fmt.Errorf("%w: WhoIs answer without a node", ErrUnknownPeer)
	}
	n := who.Node
	if n.StableID == "" {
		return nil, fmt.Errorf("%w: node without a stable ID", ErrUnavailable)
	}
	if n.Expired || (!n.KeyExpiry.IsZero() && n.KeyExpiry.Before(time.Now())) {
		// Logged out, or its key expired: no longer a node of the
		// tailnet, whatever tailscaled still remembers of it.
		// tailscaled flags Expired only when it rebuilds its whole
		// network map; a changed KeyExpiry alone arrives sooner.
		return nil, fmt.Errorf("%w: node %s's key has expired", ErrUnknownPeer, n.StableID)
	}
	id := &Identity{
		NodeName:  strings.TrimSuffix(n.Name, "."),
		NodeID:    string(n.StableID),
		Addresses: n.Addresses,
		Caps:      who.CapMap,
	}
	if _, tailnet, ok := strings.Cut(id.NodeName, "."); ok {
		id.Tailnet = tailnet
	}
	id.Sharee = n.Sharer != 0 || (ownTailnet != "" && !strings.EqualFold(id.Tailnet, ownTailnet))
	if n.IsTagged() {
		// A tagged device is identified by its node, never by the user who
		// happened to register it: production control reports the user
		// "tagged-devices", test control the registering user.
		id.Tagged = true
		id.Tags = append([]string(nil), n.Tags...)
		id.Subject = "node:" + id.NodeID
		return id, nil
	}
	up := who.UserProfile
	if up == nil || up.ID == 0 {
		return nil, fmt.Errorf("%w: untagged node without a user", ErrUnavailable)
	}
	id.UserID = strconv.FormatInt(int64(up.ID), 10)
	id.LoginName = up.LoginName
	id.DisplayName = up.DisplayName
	id.ProfilePicURL = up.ProfilePicURL
	id.Subject = "user:" + id.UserID
	return id, nil
}
