// Package session holds the state of browser logins: authorization codes,
// refresh-token families (one per login session) and revoked access
// tokens. A Store keeps them; backends are an embedded bbolt database
// under the state dir (session/boltstore, the default) and etcd for
// replicas (session/etcdstore), and sessiontest runs one conformance suite
// against each.
//
// Nothing secret is stored: codes and refresh tokens are kept as SHA-256
// hashes of random 256-bit values, so a copy of the store lets nobody
// redeem or refresh. Every change is durable when the Store method
// returns, so an answer that hands out a new refresh token is only sent
// once a crash can no longer lose it.
package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Hash is the SHA-256 of a code or refresh secret: what a Store keeps.
type Hash [sha256.Size]byte

// HashOf returns the Hash of secret.
func HashOf(secret string) Hash { return sha256.Sum256([]byte(secret)) }

// Equal compares two hashes in constant time.
func (h Hash) Equal(o Hash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// NewSecret returns a random 256-bit secret, base64url without padding.
func NewSecret() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// NewID returns a random 128-bit identifier, base64url without padding.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Subject is who a code or session belongs to: the tailnet identity at
// login, kept so that a refresh can check the tailnet still says the same.
type Subject struct {
	// Subject is the token's "sub".
	Subject string `json:"sub"`
	// UserID is the Tailscale user ID; empty for a tagged device.
	UserID string `json:"user_id,omitempty"`
	// NodeID is the stable ID of the node the browser was on.
	NodeID string `json:"node_id"`
	// NodeAddr is one of that node's tailnet addresses, to ask tailscaled
	// about it again (WhoIs) at refresh.
	NodeAddr string `json:"node_addr"`
}

// Code is the grant behind one authorization code.
type Code struct {
	ClientID    string `json:"client_id"`
	RedirectURI string `json:"redirect_uri"`
	// Challenge is the PKCE S256 code challenge; empty only for a
	// confidential client that opted out of PKCE (Nonce is then set).
	Challenge string   `json:"challenge,omitempty"`
	Nonce     string   `json:"nonce,omitempty"`
	Scopes    []string `json:"scopes"`
	Subject   Subject  `json:"subject"`
	// AuthTime is when the person authenticated: the time of /authorize.
	AuthTime time.Time `json:"auth_time"`
	Expires  time.Time `json:"expires"`

	// Pending marks a login awaiting the person's confirmation, stored
	// under PendingHash: it is no code, and the token endpoint refuses it.
	Pending bool   `json:"pending,omitempty"`
	State   string `json:"state,omitempty"`

	// Redeemed is set by the first redemption, with what it issued, so
	// that a second redemption can revoke it.
	Redeemed  bool   `json:"redeemed,omitempty"`
	FamilyID  string `json:"family_id,omitempty"`
	AccessJTI string `json:"access_jti,omitempty"`
}

// Family is one login session's chain of refresh tokens. Only the newest
// refresh token of a family is valid; presenting an older one (it was
// stolen, or the client is broken) revokes the family.
type Family struct {
	ID       string    `json:"id"`
	ClientID string    `json:"client_id"`
	Scopes   []string  `json:"scopes"`
	Subject  Subject   `json:"subject"`
	AuthTime time.Time `json:"auth_time"`
	Created  time.Time `json:"created"`
	// LastUsed is when the family last issued a token: the idle timeout
	// runs from it.
	LastUsed time.Time `json:"last_used"`
	// IdleTimeout ends the family when it goes unused that long;
	// Expires ends it regardless.
	IdleTimeout time.Duration `json:"idle_timeout"`
	Expires     time.Time     `json:"expires"`
	// Current is the hash of the one valid refresh secret; Generation
	// counts rotations.
	Current    Hash `json:"current"`
	Generation int  `json:"generation"`
	// Revoked, when set, says why the family ended early.
	Revoked string `json:"revoked,omitempty"`
	// AccessJTI is the jti of the newest access token issued in this
	// session, revoked with the family.
	AccessJTI string `json:"access_jti,omitempty"`
}

// Ended reports why f can no longer issue tokens at now, or "".
func (f *Family) Ended(now time.Time) string {
	switch {
	case f.Revoked != "":
		return "revoked: " + f.Revoked
	case !now.Before(f.Expires):
		return "the session reached its lifetime"
	case f.IdleTimeout > 0 && !now.Before(f.LastUsed.Add(f.IdleTimeout)):
		return "the session was idle too long"
	}
	return ""
}

// Retention is how long past its end a record is kept: long enough to
// recognise a reused code or refresh token for what it is.
const Retention = 24 * time.Hour

// Errors a Store returns; match them with errors.Is.
var (
	// ErrNotFound: no such code or family (never issued, or expired and
	// dropped).
	ErrNotFound = errors.New("session: not found")
	// ErrRedeemed: the code was redeemed before. The *Code returned with
	// it says what the first redemption issued.
	ErrRedeemed = errors.New("session: code already redeemed")
	// ErrConflict: the family changed since it was read (another refresh
	// with the same token won): the caller treats it as reuse.
	ErrConflict = errors.New("session: family changed concurrently")
	// ErrExists: an ID or hash is taken (a random collision, or a bug).
	ErrExists = errors.New("session: already exists")
)

// Store keeps codes, families and revoked access tokens. Every method is
// atomic and durable when it returns.
type Store interface {
	// PutCode stores a new code under its hash, until c.Expires.
	PutCode(ctx context.Context, h Hash, c *Code) error
	// RedeemCode marks the code redeemed, recording the family and access
	// token the redemption issues, and returns the code. check, if not
	// nil, runs first on the unredeemed code: if it fails (wrong client,
	// redirect URI or PKCE verifier), the code stays unredeemed and
	// check's error is returned. A code redeemed before is returned with
	// ErrRedeemed and left as it was; an unknown or expired code is
	// ErrNotFound. check may run more than once and must not have side
	// effects.
	RedeemCode(ctx context.Context, h Hash, now time.Time, familyID, accessJTI string, check func(*Code) error) (*Code, error)

	// PutFamily stores a new family.
	PutFamily(ctx context.Context, f *Family) error
	// Family returns the family with the given ID.
	Family(ctx context.Context, id string) (*Family, error)
	// UpdateFamily replaces the family f.ID if its stored Generation is
	// still prev (compare-and-swap), else it returns ErrConflict and
	// changes nothing.
	UpdateFamily(ctx context.Context, f *Family, prev int) error

	// RevokeAccess records that the access token jti is revoked until it
	// expires; AccessRevoked reports it.
	RevokeAccess(ctx context.Context, jti string, expires time.Time) error
	AccessRevoked(ctx context.Context, jti string) (bool, error)

	// Close releases the store.
	Close() error
}

// A refresh token is "rt1.<handle>.<secret>": the handle finds the
// family, the secret proves the holder has its newest token. The family's
// ID (its key in the store, and the ID token's "sid") is the hash of the
// handle, so that an ID token, a log line or a copy of the store, all of
// which carry the family ID, give nobody a refresh token's handle.

// StoreConfig is a backend's configuration, which opens its store. The
// configuration chooses one (config.SessionStore).
type StoreConfig interface {
	OpenStore(ctx context.Context) (Store, error)
}

// RefreshToken returns the refresh token for handle and secret.
func RefreshToken(handle, secret string) string { return "rt1." + handle + "." + secret }

// ParseRefreshToken splits a refresh token into handle and secret.
func ParseRefreshToken(tok string) (handle, secret string, err error) {
	rest, ok := strings.CutPrefix(tok, "rt1.")
	if ok {
		handle, secret, ok = strings.Cut(rest, ".")
	}
	if !ok || len(handle) != 22 || len(secret) != 43 {
		return "", "", fmt.Errorf("%w: malformed refresh token", ErrNotFound)
	}
	return handle, secret, nil
}

// FamilyID returns the ID of the family a refresh token handle belongs to.
func FamilyID(handle string) string {
	sum := sha256.Sum256([]byte("tsidp family " + handle))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// CodeHash is the key of an authorization code in the store, and
// PendingHash that of a login awaiting confirmation: distinct inputs, so
// that neither can be presented as the other.
func CodeHash(code string) Hash { return HashOf("tsidp code " + code) }

// PendingHash: see CodeHash.
func PendingHash(token string) Hash { return HashOf("tsidp pending " + token) }
