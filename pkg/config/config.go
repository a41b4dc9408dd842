// Package config is tsidp's configuration: the file format, its defaults and
// its validation. Precedence is flags > environment > file > defaults; the
// command line layer applies flags on top of a loaded Config before Validate.
//
// Loading is strict: an unknown key is an error that names the key and line,
// because a misspelled security setting must never be silently ignored.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/session/boltstore"
	sessionetcd "github.com/tsidp/tsidp/pkg/session/etcdstore"
)

// Config is the whole configuration file.
type Config struct {
	// Issuer is the "iss" of tokens and the base URL verifiers fetch
	// discovery and JWKS from. Required, except with backend tsnet where
	// it defaults to http://<node's MagicDNS name>.
	Issuer string `yaml:"issuer"`
	// StateDir holds keys (file store), the admin socket and tsnet state.
	StateDir string `yaml:"state_dir"`
	// Backend is "tailscale" (a local tailscaled) or "tsnet" (tsidp is its
	// own node).
	Backend string `yaml:"backend"`
	// Listen lists TCP addresses to serve on with backend "tailscale".
	Listen []string `yaml:"listen"`

	Tailscale TailscaleConfig      `yaml:"tailscale"`
	TSNet     identity.TSNetConfig `yaml:"tsnet"`
	Identity  identity.Rules       `yaml:"identity"`
	Keys      KeysConfig           `yaml:"keys"`
	Tokens    TokensConfig         `yaml:"tokens"`
	Audiences []audience.Config    `yaml:"audiences"`
	Grants    GrantsConfig         `yaml:"grants"`
	// Plugins run in this order; their claims merge in this order, after
	// tailnet grants.
	Plugins []plugin.Config `yaml:"plugins"`
	// Clients are the OpenID Provider's relying parties (web apps that
	// log people in with their tailnet identity).
	Clients []clients.Config `yaml:"clients"`
	OIDC    OIDCConfig       `yaml:"oidc"`
	Admin   AdminConfig      `yaml:"admin"`
}

// OIDCConfig configures the OpenID Provider's logins.
type OIDCConfig struct {
	// Confirm asks for a confirmation page before every login to every
	// client (jump hosts, where several people share one tailnet
	// identity). Clients can ask for it one by one too.
	Confirm bool `yaml:"confirm"`
	// SessionIdleTimeout ends a login session (its refresh tokens) when
	// it goes unused this long. Default 168h.
	SessionIdleTimeout time.Duration `yaml:"session_idle_timeout"`
	// SessionLifetime ends a login session this long after the login,
	// however it is used. Default 720h.
	SessionLifetime time.Duration `yaml:"session_lifetime"`
}

// TailscaleConfig configures the "tailscale" backend.
type TailscaleConfig struct {
	// Socket is tailscaled's LocalAPI socket. Empty means the platform
	// default (/var/run/tailscale/tailscaled.sock on Linux).
	Socket string `yaml:"socket"`
}

// KeysConfig configures signing keys and their rotation.
type KeysConfig struct {
	// Store is "file" (keys under state_dir/keys) or
	// "etcd://host:2379[,host:2379…]".
	Store string `yaml:"store"`
	// Algorithms lists the signing algorithms to keep keys for.
	Algorithms []string `yaml:"algorithms"`
	// RotationPeriod is how long a key signs before scheduled rotation;
	// 0 disables scheduled rotation.
	RotationPeriod *time.Duration `yaml:"rotation_period"`
	// JWKSMaxAge is the Cache-Control max-age of the JWKS; 0 tells
	// verifiers not to cache it.
	JWKSMaxAge *time.Duration `yaml:"jwks_max_age"`
	// ClockSkew is the tolerance assumed between tsidp and verifiers: the
	// backdating of nbf and part of every key publication lead and
	// retention.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// RSABits is the RSA key size for RS256.
	RSABits int `yaml:"rsa_bits"`
	// Etcd configures the etcd store; used when Store is etcd://….
	Etcd EtcdConfig `yaml:"etcd"`
}

// EtcdConfig configures the etcd key store, shared by replicas.
type EtcdConfig struct {
	// Prefix is prepended to tsidp's etcd keys (<prefix>keyset,
	// <prefix>leader/). Deployments sharing a cluster need distinct ones.
	Prefix string `yaml:"prefix"`
	// KEKFile holds the key-encryption key that seals private keys in
	// etcd: 32 raw bytes, 64 hex digits or base64; mode 0400 or 0600.
	// Required with an etcd store.
	KEKFile string `yaml:"kek_file"`
	// CAFile, CertFile and KeyFile configure TLS to etcd: the CA of the
	// members' certificates, and a client certificate and key. TLS is on
	// when any of them is set.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// DialTimeout bounds the first contact with etcd at start.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ElectionTTL bounds leader failover: a replica that dies without
	// resigning is replaced as rotation leader within it.
	ElectionTTL time.Duration `yaml:"election_ttl"`
}

// TokensConfig holds token defaults that audiences inherit.
type TokensConfig struct {
	DefaultTTL time.Duration `yaml:"default_ttl"`
	MaxTTL     time.Duration `yaml:"max_ttl"`
	Algorithm  string        `yaml:"algorithm"`
}

// GrantsConfig configures claims and audiences from tailnet policy grants.
type GrantsConfig struct {
	// Capability is the peer capability name to read, e.g.
	// "example.com/cap/tsidp". Empty disables grants.
	Capability string `yaml:"capability"`
}

// AdminConfig configures the operator surfaces.
type AdminConfig struct {
	// Socket is the admin API's unix socket. Default state_dir/admin.sock.
	Socket string `yaml:"socket"`
	// MetricsListen, if set, serves Prometheus metrics on this TCP address.
	MetricsListen string `yaml:"metrics_listen"`
}

// Default values.
const (
	DefaultBackend   = "tailscale"
	DefaultListen    = "127.0.0.1:8080"
	DefaultStateDir  = "/var/lib/tsidp"
	DefaultTTL       = time.Hour
	DefaultMaxTTL    = 24 * time.Hour
	DefaultAlgorithm = "ES256"

	DefaultSessionIdleTimeout = 7 * 24 * time.Hour
	DefaultSessionLifetime    = 30 * 24 * time.Hour

	DefaultEtcdPrefix      = "/tsidp/"
	DefaultEtcdDialTimeout = 5 * time.Second
	DefaultElectionTTL     = 10 * time.Second
	// MinElectionTTL: the election lease is a second shorter, and etcd
	// raises shorter lease TTLs to its own minimum (2s with etcd's
	// defaults); see etcdstore.Config.ElectionTTL.
	MinElectionTTL = 3 * time.Second
	MaxElectionTTL = 5 * time.Minute
)

// Load reads a configuration file. An empty path returns the defaults.
func Load(path string) (*Config, error) {
	c := new(Config)
	if path == "" {
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	// Bound what we read: a config file is small, and reading /dev/zero by
	// mistake should fail rather than hang.
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("config: %s: larger than 1 MiB", path)
	}
	if err := Parse(b, c); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

var (
	unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type (\S+)`)
	notDuration  = regexp.MustCompile("line (\\d+): cannot unmarshal !!\\w+ `(.*)` into time.Duration")
)

// Parse decodes YAML (or JSON, a subset of it) strictly into c.
func Parse(b []byte, c *Config) error {
	b, err := fixDurations(b)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file is the defaults
		}
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			msg := te.Errors[0]
			if m := unknownField.FindStringSubmatch(msg); m != nil {
				return fmt.Errorf("line %s: unknown key %q (in %s)", m[1], m[2], sectionOf(m[3]))
			}
			if m := notDuration.FindStringSubmatch(msg); m != nil {
				return fmt.Errorf("line %s: %s is not a duration: write it with a unit, like 90s, 15m or 720h", m[1], m[2])
			}
			return errors.New(strings.TrimPrefix(msg, "yaml: "))
		}
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

func sectionOf(goType string) string {
	switch goType {
	case "config.Config":
		return "top level"
	case "config.KeysConfig":
		return "keys"
	case "config.EtcdConfig":
		return "keys.etcd"
	case "config.TokensConfig":
		return "tokens"
	case "config.TailscaleConfig":
		return "tailscale"
	case "config.GrantsConfig":
		return "grants"
	case "config.AdminConfig":
		return "admin"
	case "identity.TSNetConfig":
		return "tsnet"
	case "identity.Rules":
		return "identity"
	case "audience.Config":
		return "audiences"
	case "plugin.Config":
		return "plugins"
	case "clients.Config":
		return "clients"
	case "config.OIDCConfig":
		return "oidc"
	}
	return goType
}

// Provision fills defaults for everything left unset.
func (c *Config) Provision() {
	if c.Backend == "" {
		c.Backend = DefaultBackend
	}
	if c.StateDir == "" {
		if d := os.Getenv("STATE_DIRECTORY"); d != "" { // systemd StateDirectory=
			c.StateDir = d
		} else {
			c.StateDir = DefaultStateDir
		}
	}
	// Paths are made absolute before anything is derived from them, so
	// that a relative state dir cannot yield a relative admin socket
	// beside an absolute state dir. (filepath.Abs fails only when the
	// working directory is gone; Validate then reports the relative path.)
	for _, p := range []*string{&c.StateDir, &c.Admin.Socket, &c.Tailscale.Socket, &c.TSNet.Dir, &c.TSNet.AuthKeyFile,
		&c.Keys.Etcd.KEKFile, &c.Keys.Etcd.CAFile, &c.Keys.Etcd.CertFile, &c.Keys.Etcd.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	if c.Backend == "tailscale" && len(c.Listen) == 0 {
		c.Listen = []string{DefaultListen}
	}
	if c.Backend == "tsnet" {
		c.TSNet.Provision(c.StateDir)
	}
	if c.Keys.Store == "" {
		c.Keys.Store = "file"
	}
	if c.Keys.Etcd.Prefix == "" {
		c.Keys.Etcd.Prefix = DefaultEtcdPrefix
	}
	if c.Keys.Etcd.DialTimeout == 0 {
		c.Keys.Etcd.DialTimeout = DefaultEtcdDialTimeout
	}
	if c.Keys.Etcd.ElectionTTL == 0 {
		c.Keys.Etcd.ElectionTTL = DefaultElectionTTL
	}
	if c.Tokens.DefaultTTL == 0 {
		c.Tokens.DefaultTTL = DefaultTTL
	}
	if c.Tokens.MaxTTL == 0 {
		c.Tokens.MaxTTL = max(DefaultMaxTTL, c.Tokens.DefaultTTL)
	}
	if c.Tokens.Algorithm == "" {
		c.Tokens.Algorithm = DefaultAlgorithm
	}
	if c.Admin.Socket == "" {
		c.Admin.Socket = filepath.Join(c.StateDir, "admin.sock")
	}
	if c.OIDC.SessionIdleTimeout == 0 {
		c.OIDC.SessionIdleTimeout = DefaultSessionIdleTimeout
	}
	if c.OIDC.SessionLifetime == 0 {
		c.OIDC.SessionLifetime = DefaultSessionLifetime
	}
}

// KeyPolicy returns the key-set policy the configuration implies. Call it
// after Provision.
func (c *Config) KeyPolicy() (keys.Policy, error) {
	p := keys.Policy{
		ClockSkew:   c.Keys.ClockSkew,
		MaxTokenTTL: c.Tokens.MaxTTL,
		RSABits:     c.Keys.RSABits,
	}
	for _, a := range c.Keys.Algorithms {
		alg, err := keys.ParseAlgorithm(a)
		if err != nil {
			return keys.Policy{}, fmt.Errorf("keys.algorithms: %s", strings.TrimPrefix(err.Error(), "keys: "))
		}
		p.Algorithms = append(p.Algorithms, alg)
	}
	p.Provision()
	// Set after Provision, which reads 0 as "the default": an explicit 0
	// disables scheduled rotation, and tells verifiers not to cache the
	// JWKS.
	if c.Keys.RotationPeriod != nil {
		p.RotationPeriod = *c.Keys.RotationPeriod
	}
	if c.Keys.JWKSMaxAge != nil {
		p.JWKSMaxAge = *c.Keys.JWKSMaxAge
	}
	if err := p.Validate(); err != nil {
		return keys.Policy{}, err
	}
	return p, nil
}

// AudienceRegistry returns the configured audiences. Call it after Provision.
func (c *Config) AudienceRegistry() (*audience.Registry, error) {
	kp, err := c.KeyPolicy()
	if err != nil {
		return nil, err
	}
	d := audience.Defaults{TTL: c.Tokens.DefaultTTL, MaxTTL: c.Tokens.MaxTTL, Algorithm: c.Tokens.Algorithm}
	for _, a := range kp.Algorithms {
		d.Algorithms = append(d.Algorithms, string(a))
	}
	return audience.NewRegistry(c.Audiences, d)
}

// SessionStore returns where login sessions are kept: beside the keys, in
// an embedded database under the state dir with the file key store, in
// etcd (under keys.etcd.prefix) with the etcd key store, so that replicas
// share them. Call it after Provision.
func (c *Config) SessionStore() (session.StoreConfig, error) {
	ks, err := c.KeyStore()
	if err != nil {
		return nil, err
	}
	if es, ok := ks.(etcdstore.Settings); ok {
		return sessionetcd.Config{Endpoints: es.Endpoints, TLS: es.TLS, DialTimeout: es.DialTimeout, Prefix: es.Prefix}, nil
	}
	return boltstore.Config{Path: filepath.Join(c.StateDir, "sessions.db")}, nil
}

// ClientRegistry returns the configured OpenID Provider clients. Call it
// after Provision.
func (c *Config) ClientRegistry() (*clients.Registry, error) {
	kp, err := c.KeyPolicy()
	if err != nil {
		return nil, err
	}
	reg, err := c.AudienceRegistry()
	if err != nil {
		return nil, err
	}
	d := clients.Defaults{TTL: c.Tokens.DefaultTTL, Algorithm: c.Tokens.Algorithm}
	for _, a := range kp.Algorithms {
		d.Algorithms = append(d.Algorithms, string(a))
	}
	return clients.NewRegistry(c.Clients, d, reg)
}

// Validate checks everything that can be checked without starting anything.
// Call it after flags were applied and Provision. It changes nothing.
func (c *Config) Validate() error {
	switch c.Backend {
	case "tailscale":
		if len(c.Listen) == 0 {
			return errors.New("config: listen: at least one address is required with backend tailscale")
		}
		for _, l := range c.Listen {
			if _, _, err := net.SplitHostPort(l); err != nil {
				return fmt.Errorf("config: listen %q: %v", l, err)
			}
		}
		if c.Issuer == "" {
			return errors.New("config: issuer is required with backend tailscale (the URL verifiers reach tsidp at)")
		}
	case "tsnet":
		// --listen sets both; a top-level listen of its own would be
		// silently unused.
		if len(c.Listen) > 0 && !slices.Equal(c.Listen, c.TSNet.Listen) {
			return fmt.Errorf("config: listen applies to backend tailscale; with backend tsnet set tsnet.listen (tailnet addresses, default \":80\")")
		}
		if err := c.TSNet.Validate(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	default:
		return fmt.Errorf("config: backend %q: must be \"tailscale\" or \"tsnet\"", c.Backend)
	}
	if c.Issuer != "" {
		if err := issue.CheckIssuer(c.Issuer); err != nil {
			return fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "issue: "))
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("config: state_dir %q is not an absolute path, and the working directory is unknown", c.StateDir)
	}
	if len(c.Admin.Socket) >= 104 {
		return fmt.Errorf("config: admin socket path %q is too long for a unix socket (max 103 bytes); use a shorter state_dir or admin.socket", c.Admin.Socket)
	}
	if c.Tokens.DefaultTTL < audience.MinTTL {
		return fmt.Errorf("config: tokens.default_ttl %v is shorter than %v", c.Tokens.DefaultTTL, audience.MinTTL)
	}
	if c.Tokens.MaxTTL < c.Tokens.DefaultTTL {
		return fmt.Errorf("config: tokens.max_ttl %v is shorter than tokens.default_ttl %v", c.Tokens.MaxTTL, c.Tokens.DefaultTTL)
	}
	if _, err := c.AudienceRegistry(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	seen := map[string]bool{}
	for i := range c.Plugins {
		pc := c.Plugins[i] // validate a copy: the daemon provisions its own
		pc.Provision()
		if err := pc.Validate(); err != nil {
			return fmt.Errorf("config: plugins[%d]: %w", i, err)
		}
		if seen[pc.Name] {
			return fmt.Errorf("config: plugins: %q is configured twice", pc.Name)
		}
		seen[pc.Name] = true
	}
	if _, err := c.ClientRegistry(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if o := c.OIDC; o.SessionIdleTimeout > o.SessionLifetime {
		return fmt.Errorf("config: oidc.session_idle_timeout %v is longer than oidc.session_lifetime %v", o.SessionIdleTimeout, o.SessionLifetime)
	}
	if err := c.ValidateStore(); err != nil {
		return err
	}
	return nil
}

// ValidateStore checks the key store settings alone: the keys commands use
// it, since they need no issuer or listener.
func (c *Config) ValidateStore() error {
	if c.Keys.Store == "file" {
		return nil
	}
	if _, err := c.EtcdEndpoints(); err != nil {
		return err
	}
	e := c.Keys.Etcd
	switch {
	case e.KEKFile == "":
		return errors.New("config: keys.etcd.kek_file (--kek-file) is required with an etcd store: private keys are encrypted in etcd under that key")
	case (e.CertFile == "") != (e.KeyFile == ""):
		return errors.New("config: keys.etcd.cert_file and keys.etcd.key_file go together: set both (client certificate) or neither")
	case e.Prefix == "":
		return errors.New("config: keys.etcd.prefix must not be empty")
	case e.DialTimeout <= 0 || e.DialTimeout > time.Minute:
		return fmt.Errorf("config: keys.etcd.dial_timeout %v: must be positive and at most 1m", e.DialTimeout)
	case e.ElectionTTL < MinElectionTTL || e.ElectionTTL > MaxElectionTTL:
		return fmt.Errorf("config: keys.etcd.election_ttl %v: must be between %v and %v", e.ElectionTTL, MinElectionTTL, MaxElectionTTL)
	case e.ElectionTTL%time.Second != 0:
		return fmt.Errorf("config: keys.etcd.election_ttl %v: etcd leases have whole seconds", e.ElectionTTL)
	}
	return nil
}

// KeyStore returns the configuration of the key store keys.store names,
// which opens the store itself: the file store under <state_dir>/keys, or
// etcd with the keys.etcd settings. This is the one place that knows which
// backend a keys.store value means. Call it after Provision.
func (c *Config) KeyStore() (keys.StoreConfig, error) {
	if err := c.ValidateStore(); err != nil {
		return nil, err
	}
	if c.Keys.Store == "file" {
		return filestore.Config{Dir: filepath.Join(c.StateDir, "keys")}, nil
	}
	eps, _ := c.EtcdEndpoints() // ValidateStore checked them
	e := c.Keys.Etcd
	return etcdstore.Settings{
		Endpoints:   eps,
		Prefix:      e.Prefix,
		KEKFile:     e.KEKFile,
		TLS:         etcdstore.TLSFiles{CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile},
		DialTimeout: e.DialTimeout,
		ElectionTTL: e.ElectionTTL,
	}, nil
}

// EtcdEndpoints returns the host:port endpoints of an etcd://… store.
func (c *Config) EtcdEndpoints() ([]string, error) {
	rest, ok := strings.CutPrefix(c.Keys.Store, "etcd://")
	if !ok {
		return nil, fmt.Errorf("config: keys.store %q: must be \"file\" or \"etcd://host:port[,host:port…]\"", c.Keys.Store)
	}
	var eps []string
	for _, e := range strings.Split(rest, ",") {
		e = strings.TrimSpace(e)
		if _, port, err := net.SplitHostPort(e); err != nil || port == "" || strings.ContainsAny(e, "/?#@") {
			return nil, fmt.Errorf("config: keys.store %q: endpoint %q is not host:port", c.Keys.Store, e)
		}
		eps = append(eps, e)
	}
	return eps, nil
}
