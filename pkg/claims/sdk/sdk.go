// Package sdk is the Go SDK for tsidp claims plugins.
//
// A plugin author implements Plugin with plain Go types and calls Serve from
// main; the SDK speaks the tsidp.claims.v1 protocol and the go-plugin
// handshake. The sdktest package runs a Plugin in process, through the same
// code tsidp uses, for unit tests.
//
//	func main() { sdk.Serve(&myPlugin{}) }
package sdk

import (
	"context"
	"encoding/json"
	"net/netip"
	"time"
)

// Plugin is implemented by a claims plugin. Enrich is called concurrently
// from many goroutines; Describe and Configure are called once, in that
// order, before the first Enrich.
type Plugin interface {
	// Describe reports what the plugin is and which claims it may set.
	Describe() Description
	// Configure receives the plugin's "config" object from tsidp's
	// configuration as JSON ("{}" when absent). Returning an error keeps
	// the plugin out of service; tsidp logs it and retries with backoff.
	Configure(ctx context.Context, config json.RawMessage) error
	// Enrich answers for one caller and audience. Return Allow(...) or
	// Deny(...); return an error when the plugin cannot answer (tsidp then
	// applies the operator's on_error policy). ctx carries tsidp's
	// deadline.
	Enrich(ctx context.Context, req *Request) (*Response, error)
}

// Description describes a plugin to tsidp.
type Description struct {
	// Name and Version identify the plugin in logs and health reports.
	Name    string
	Version string
	// Claims lists every claim name Enrich may return. tsidp drops any
	// other claim, and refuses to run a plugin that declares a reserved
	// claim such as "sub" or "email".
	Claims []string
	// Cacheable lets tsidp cache answers per caller, audience and scopes.
	Cacheable bool
}

// Identity is the caller, as tailscaled's WhoIs reports it.
type Identity struct {
	// Subject is the token's "sub": "user:<id>" for a person and
	// "node:<stable node id>" for a tagged device.
	Subject string
	// User fields, empty for tagged devices.
	UserID        string
	LoginName     string // e.g. "alice@example.com"
	DisplayName   string
	ProfilePicURL string
	// Node fields.
	NodeName  string // MagicDNS name, e.g. "laptop.tail1234.ts.net"
	NodeID    string
	Tailnet   string
	Addresses []netip.Prefix
	Tags      []string // e.g. "tag:ci"
	Tagged    bool
	Sharee    bool
	// Caps are the caller's peer capabilities towards tsidp, keyed by
	// capability name; each value is a list of JSON values.
	Caps map[string][]json.RawMessage
}

// HostName returns the first label of NodeName.
func (id *Identity) HostName() string {
	for i := 0; i < len(id.NodeName); i++ {
		if id.NodeName[i] == '.' {
			return id.NodeName[:i]
		}
	}
	return id.NodeName
}

// Request is one enrichment request.
type Request struct {
	Identity Identity
	// Audience is the audience the caller asks a token for.
	Audience string
	// Scopes are the scopes the caller asks for.
	Scopes []string
}

// Response is a plugin's answer. Build it with Allow or Deny.
type Response struct {
	// Deny refuses the token; Reason is logged and shown to the caller.
	Deny   bool
	Reason string
	// Claims are added to the token. Each value is encoded with
	// encoding/json (a json.RawMessage is used as is).
	Claims map[string]any
	// MaxTTL, if non-zero, caps the token's lifetime.
	MaxTTL time.Duration
	// CacheTTL, if non-zero, shortens how long tsidp caches this answer.
	CacheTTL time.Duration
}

// Allow returns a Response that adds claims (which may be nil).
func Allow(claims map[string]any) *Response { return &Response{Claims: claims} }

// Deny returns a Response that refuses the token for reason.
func Deny(reason string) *Response { return &Response{Deny: true, Reason: reason} }
