// Package clients holds the OAuth clients (relying parties) of tsidp's
// OpenID Provider, as configured: who they are, how they authenticate at
// the token endpoint, where codes may be sent, who may log in to them.
//
// Secrets are kept as SHA-256 hashes. The secrets tsidp generates are
// random 256-bit values, for which a slow password hash adds nothing but
// cost per token request; a hash at all means a copy of the configuration
// does not give out the secrets.
package clients

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/identity"
)

// Token endpoint authentication methods (RFC 7591 names, plus "tailnet").
const (
	AuthSecretBasic = "client_secret_basic"
	AuthSecretPost  = "client_secret_post"
	AuthNone        = "none"
	// AuthTailnet authenticates a confidential client by the tailnet
	// identity of its connection to the token endpoint: a relying party
	// on a tagged server needs no secret at all.
	AuthTailnet = "tailnet"
)

// Scopes the OpenID Provider knows.
const (
	ScopeOpenID        = "openid"
	ScopeProfile       = "profile"
	ScopeEmail         = "email"
	ScopeGroups        = "groups"
	ScopeOfflineAccess = "offline_access"
)

// StandardScopes are the scopes a client may ask for unless its
// configuration narrows them.
func StandardScopes() []string {
	return []string{ScopeOpenID, ScopeProfile, ScopeEmail, ScopeGroups, ScopeOfflineAccess}
}

// Config is one client as written under "clients:" in the configuration.
type Config struct {
	// ID is the client_id.
	ID string `yaml:"id"`
	// Name is shown to people on the confirmation and refusal pages.
	// Default: the ID.
	Name string `yaml:"name"`
	// AuthMethod is how the client authenticates at the token endpoint:
	// client_secret_basic (the default with a secret), client_secret_post,
	// tailnet (by its connection's tailnet identity, see TailnetIdentities)
	// or none (a public client: a browser or native app that can keep no
	// secret; PKCE is then always required).
	AuthMethod string `yaml:"token_endpoint_auth_method"`
	// SecretSHA256 is the hex SHA-256 of the client secret
	// (`tsidp clients secret` makes a secret and prints both).
	SecretSHA256 string `yaml:"secret_sha256"`
	// TailnetIdentities, for AuthMethod tailnet, lists the tailnet
	// identities whose connection authenticates the client, in allow-rule
	// syntax: "tag:grafana", "nodeid:nXXXX", "node:grafana-1".
	TailnetIdentities []string `yaml:"tailnet_identities"`
	// RedirectURIs are where codes may be sent, compared exactly.
	RedirectURIs []string `yaml:"redirect_uris"`
	// PostLogoutRedirectURIs are where RP-initiated logout may send the
	// browser afterwards, compared exactly.
	PostLogoutRedirectURIs []string `yaml:"post_logout_redirect_uris"`
	// Native marks a native app (RFC 8252): its loopback redirect URIs
	// (http://127.0.0.1/…, http://[::1]/…) match whatever port the app
	// listens on at the time.
	Native bool `yaml:"native"`
	// Allow lists who may log in, in the syntax of an audience's allow
	// list. Tailnet grants naming the client ID open it too.
	Allow []string `yaml:"allow"`
	// AllowTaggedDevices lets tagged devices log in; a login is a
	// person's otherwise.
	AllowTaggedDevices bool `yaml:"allow_tagged_devices"`
	// Confirm shows a confirmation page before every login, for shared
	// machines where several people use one tailnet identity.
	Confirm bool `yaml:"confirm"`
	// RequirePKCE, default true, may be set false for a confidential
	// client whose software cannot send PKCE; it must then send a nonce.
	RequirePKCE *bool `yaml:"require_pkce"`
	// IDTokenAlg signs the client's ID tokens. Default RS256, which every
	// OpenID Connect library accepts.
	IDTokenAlg string `yaml:"id_token_signed_response_alg"`
	// Scopes narrows the scopes the client may ask for. Default: openid,
	// profile, email, groups and offline_access.
	Scopes []string `yaml:"scopes"`
	// AccessTokenTTL is the lifetime of access (and ID) tokens. Default
	// tokens.default_ttl.
	AccessTokenTTL time.Duration `yaml:"access_token_ttl"`
}

// Client is a validated client.
type Client struct {
	ID                     string
	Name                   string
	AuthMethod             string
	secret                 []byte // SHA-256
	tailnet                audience.Rules
	RedirectURIs           []string
	PostLogoutRedirectURIs []string
	Native                 bool
	TaggedDevices          bool
	Confirm                bool
	RequirePKCE            bool
	IDTokenAlg             string
	// Policy is the login decision's audience: the client's allow rules,
	// scopes, token lifetime and access token algorithm.
	Policy *audience.Audience
}

// Public reports whether c is a public client (no authentication at the
// token endpoint).
func (c *Client) Public() bool { return c.AuthMethod == AuthNone }

// Defaults are what clients inherit.
type Defaults struct {
	// TTL is the access token lifetime.
	TTL time.Duration
	// Algorithm signs access tokens.
	Algorithm string
	// Algorithms are those the key set publishes.
	Algorithms []string
}

// Registry is the set of clients.
type Registry struct {
	byID map[string]*Client
	ids  []string
}

// NewRegistry validates cfgs and returns the registry. Client IDs must not
// be audience names (tailnet grants name both).
func NewRegistry(cfgs []Config, d Defaults, audiences *audience.Registry) (*Registry, error) {
	r := &Registry{byID: make(map[string]*Client, len(cfgs))}
	for i, c := range cfgs {
		cl, err := compile(c, d)
		if err != nil {
			if c.ID == "" {
				return nil, fmt.Errorf("clients[%d]: %w", i, err)
			}
			return nil, fmt.Errorf("client %q: %w", c.ID, err)
		}
		if _, dup := r.byID[cl.ID]; dup {
			return nil, fmt.Errorf("client %q is configured twice", cl.ID)
		}
		if audiences != nil && audiences.Audience(cl.ID) != nil {
			return nil, fmt.Errorf("client %q: an audience has the same name; tailnet grants name both, so they must differ", cl.ID)
		}
		r.byID[cl.ID] = cl
		r.ids = append(r.ids, cl.ID)
	}
	return r, nil
}

// Client returns the client with the given ID, or nil.
func (r *Registry) Client(id string) *Client {
	if r == nil {
		return nil
	}
	return r.byID[id]
}

// IDs returns the client IDs in configuration order.
func (r *Registry) IDs() []string {
	if r == nil {
		return nil
	}
	return r.ids
}

// Len returns the number of clients.
func (r *Registry) Len() int {
	if r == nil {
		return 0
	}
	return len(r.ids)
}

func compile(c Config, d Defaults) (*Client, error) {
	if c.ID == "" || strings.TrimSpace(c.ID) != c.ID || strings.ContainsAny(c.ID, ":\x00") || len(c.ID) > 255 {
		return nil, errors.New("id is required: up to 255 characters, no colon or surrounding spaces")
	}
	cl := &Client{
		ID: c.ID, Name: c.Name, AuthMethod: c.AuthMethod, Native: c.Native,
		TaggedDevices: c.AllowTaggedDevices, Confirm: c.Confirm, RequirePKCE: true, IDTokenAlg: c.IDTokenAlg,
	}
	if cl.Name == "" {
		cl.Name = c.ID
	}
	if cl.AuthMethod == "" {
		switch {
		case len(c.TailnetIdentities) > 0:
			cl.AuthMethod = AuthTailnet
		case c.SecretSHA256 != "":
			cl.AuthMethod = AuthSecretBasic
		default:
			return nil, errors.New("token_endpoint_auth_method is required: client_secret_basic or client_secret_post (with secret_sha256), tailnet (with tailnet_identities), or none (a public client)")
		}
	}
	switch cl.AuthMethod {
	case AuthSecretBasic, AuthSecretPost:
		b, err := hex.DecodeString(strings.ToLower(c.SecretSHA256))
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("secret_sha256 must be 64 hex digits (tsidp clients secret prints a secret and its hash)")
		}
		cl.secret = b
		if len(c.TailnetIdentities) > 0 {
			return nil, fmt.Errorf("tailnet_identities go with token_endpoint_auth_method tailnet, not %s", cl.AuthMethod)
		}
	case AuthTailnet:
		if len(c.TailnetIdentities) == 0 {
			return nil, errors.New("tailnet_identities is empty: list the tailnet identities (tag:, nodeid:, node:) whose connections authenticate the client")
		}
		rules, err := audience.ParseRules(c.TailnetIdentities)
		if err != nil {
			return nil, fmt.Errorf("tailnet_identities: %w", err)
		}
		cl.tailnet = rules
		if c.SecretSHA256 != "" {
			return nil, errors.New("secret_sha256 goes with client_secret_basic or client_secret_post, not tailnet")
		}
	case AuthNone:
		if c.SecretSHA256 != "" || len(c.TailnetIdentities) > 0 {
			return nil, errors.New("a public client (token_endpoint_auth_method none) has no secret_sha256 or tailnet_identities")
		}
	default:
		return nil, fmt.Errorf("token_endpoint_auth_method %q: want client_secret_basic, client_secret_post, tailnet or none", cl.AuthMethod)
	}
	if c.RequirePKCE != nil && !*c.RequirePKCE {
		if cl.Public() {
			return nil, errors.New("require_pkce: false is only for confidential clients: a public client always uses PKCE")
		}
		cl.RequirePKCE = false
	}
	if len(c.RedirectURIs) == 0 {
		return nil, errors.New("redirect_uris is empty")
	}
	for _, u := range c.RedirectURIs {
		if err := checkRedirect(u, c.Native); err != nil {
			return nil, fmt.Errorf("redirect_uris: %w", err)
		}
	}
	cl.RedirectURIs = slices.Clone(c.RedirectURIs)
	for _, u := range c.PostLogoutRedirectURIs {
		if err := checkRedirect(u, false); err != nil {
			return nil, fmt.Errorf("post_logout_redirect_uris: %w", err)
		}
	}
	cl.PostLogoutRedirectURIs = slices.Clone(c.PostLogoutRedirectURIs)
	if cl.IDTokenAlg == "" {
		cl.IDTokenAlg = "RS256"
	}
	if len(d.Algorithms) > 0 && !slices.Contains(d.Algorithms, cl.IDTokenAlg) {
		return nil, fmt.Errorf("id_token_signed_response_alg %q is not one of keys.algorithms %v", cl.IDTokenAlg, d.Algorithms)
	}
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = StandardScopes()
	}
	for _, s := range scopes {
		if !slices.Contains(StandardScopes(), s) {
			return nil, fmt.Errorf("scopes: %q is not one of %v", s, StandardScopes())
		}
	}
	ttl := c.AccessTokenTTL
	if ttl == 0 {
		ttl = d.TTL
	}
	reg, err := audience.NewRegistry([]audience.Config{{Name: c.ID, Allow: c.Allow, TTL: ttl, MaxTTL: ttl, Algorithm: d.Algorithm, Scopes: scopes}},
		audience.Defaults{TTL: ttl, MaxTTL: ttl, Algorithm: d.Algorithm, Algorithms: d.Algorithms})
	if err != nil {
		return nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), fmt.Sprintf("audience %q: ", c.ID)))
	}
	cl.Policy = reg.Audience(c.ID)
	return cl, nil
}

// checkRedirect refuses redirect URIs that cannot be matched exactly or
// would be unsafe: relative, with a fragment or user information, plain
// http other than to loopback, a custom scheme for anything but a native
// app.
func checkRedirect(raw string, native bool) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a URL", raw)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return fmt.Errorf("%q has a fragment", raw)
	case u.User != nil:
		return fmt.Errorf("%q has user information", raw)
	}
	switch u.Scheme {
	case "https":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", raw)
		}
	case "http":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", raw)
		}
		if !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("%q is plain http to a host other than loopback: use https", raw)
		}
	case "":
		return fmt.Errorf("%q is not an absolute URL", raw)
	default:
		if !native {
			return fmt.Errorf("%q has scheme %q: only native apps (native: true) use private-use schemes", raw, u.Scheme)
		}
		if !strings.Contains(u.Scheme, ".") {
			return fmt.Errorf("%q: a private-use scheme is a reverse domain name such as com.example.app (RFC 8252 §7.1)", raw)
		}
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// RedirectAllowed reports whether uri is one of c's redirect URIs, compared
// exactly, except that for a native app a loopback IP literal's port may
// differ (RFC 8252 §7.3).
func (c *Client) RedirectAllowed(uri string) bool {
	if slices.Contains(c.RedirectURIs, uri) {
		return true
	}
	if !c.Native {
		return false
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" {
		return false
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !ip.IsLoopback() {
		return false // "localhost" is not a literal: RFC 8252 §8.3
	}
	for _, reg := range c.RedirectURIs {
		r, err := url.Parse(reg)
		if err != nil || r.Scheme != "http" || r.Hostname() != u.Hostname() {
			continue
		}
		if r.Path == u.Path && r.RawQuery == u.RawQuery && r.User == nil && u.User == nil && validPort(u.Port()) {
			return true
		}
	}
	return false
}

func validPort(p string) bool {
	if p == "" {
		return true
	}
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536 && strconv.Itoa(n) == p
}

// PostLogoutRedirectAllowed reports whether uri is one of c's post-logout
// redirect URIs, compared exactly.
func (c *Client) PostLogoutRedirectAllowed(uri string) bool {
	return slices.Contains(c.PostLogoutRedirectURIs, uri)
}

// CheckSecret reports whether secret is c's client secret.
func (c *Client) CheckSecret(secret string) bool {
	if c.secret == nil {
		return false
	}
	sum := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(sum[:], c.secret) == 1
}

// TailnetAuthenticates reports whether a connection from id authenticates
// c (AuthMethod tailnet), and by which rule.
func (c *Client) TailnetAuthenticates(id *identity.Identity) (string, bool) {
	if c.AuthMethod != AuthTailnet || id == nil {
		return "", false
	}
	return c.tailnet.Match(id, nil)
}

// SecretHash returns the hex SHA-256 of secret, as secret_sha256 wants it.
func SecretHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
