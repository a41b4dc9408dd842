package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/session/boltstore"
	sessionetcd "github.com/tsidp/tsidp/pkg/session/etcdstore"
)

// docBlocks returns the ```yaml blocks of a doc file.
func docBlocks(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

func TestDocExampleIsValid(t *testing.T) {
	blocks := docBlocks(t, "../../docs/config.md")
	if len(blocks) == 0 {
		t.Fatal("docs/config.md has no yaml block")
	}
	for _, b := range blocks {
		var c Config
		if err := Parse([]byte(b), &c); err != nil {
			t.Fatalf("docs/config.md example does not parse: %v", err)
		}
		c.StateDir = t.TempDir()
		c.Provision()
		if err := c.Validate(); err != nil {
			t.Fatalf("docs/config.md example is invalid: %v", err)
		}
		if c.Audiences[0].MaxTTL != time.Hour || len(c.Keys.Algorithms) != 3 || *c.Keys.RotationPeriod != 720*time.Hour {
			t.Errorf("parsed example = %+v", c)
		}
	}
}

func TestUnknownKeysAreErrors(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"isuer: x\n", `line 1: unknown key "isuer" (in top level)`},
		{"keys:\n  rotation: 1h\n", `line 2: unknown key "rotation" (in keys)`},
		{"audiences:\n  - name: a\n    alow: ['*']\n", `line 3: unknown key "alow" (in audiences)`},
		{"tsnet:\n  authkey: x\n", `unknown key "authkey" (in tsnet)`},
		{"identity:\n  allow_sharee: true\n", `unknown key "allow_sharee" (in identity)`},
		{"tokens:\n  default_ttl: soon\n", "soon"},
		{"keys:\n  rotation_period: 15\n", "line 2: 15 is not a duration: write it with a unit, like 90s, 15m or 720h"},
		{"issuer: x\n---\nissuer: y\n", "more than one"},
	}
	for _, tt := range tests {
		var c Config
		err := Parse([]byte(tt.yaml), &c)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tt.yaml, err, tt.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.json")
	os.WriteFile(p, []byte(`{"issuer": "https://idp.example", "audiences": [{"name": "a", "allow": ["*"]}]}`), 0o600)
	c, err := Load(p)
	if err != nil || c.Issuer != "https://idp.example" {
		t.Fatalf("JSON config: %+v, %v", c, err)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file loaded")
	}
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if _, err := Load(empty); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	base := func() *Config {
		return &Config{Issuer: "https://idp.example", StateDir: "/var/lib/tsidp"}
	}
	dur := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"ok", func(*Config) {}, ""},
		{"no issuer", func(c *Config) { c.Issuer = "" }, "issuer is required"},
		{"issuer not a URL", func(c *Config) { c.Issuer = "idp.example" }, "http or https"},
		{"issuer with query", func(c *Config) { c.Issuer = "https://idp.example/?a=b" }, "query"},
		{"issuer with empty query", func(c *Config) { c.Issuer = "https://idp.example?" }, "query"},
		{"issuer with user", func(c *Config) { c.Issuer = "https://u:p@idp.example" }, "user information"},
		{"issuer with path", func(c *Config) { c.Issuer = "https://idp.example.com/tsidp" }, `serves at the root of its issuer URL; write it without a path or trailing slash, as "https://idp.example.com"`},
		{"issuer with trailing slash", func(c *Config) { c.Issuer = "https://idp.example.com/" }, "without a path or trailing slash"},
		{"issuer with port", func(c *Config) { c.Issuer = "http://idp.example.com:8080" }, ""},
		{"bad backend", func(c *Config) { c.Backend = "x" }, "backend"},
		{"bad listen", func(c *Config) { c.Listen = []string{"8080"} }, "listen"},
		{"rotation shorter than jwks max age", func(c *Config) { c.Keys.RotationPeriod = dur(30 * time.Minute) }, "rotation_period"},
		{"rotation disabled", func(c *Config) { c.Keys.RotationPeriod = dur(0) }, ""},
		{"bad algorithm", func(c *Config) { c.Keys.Algorithms = []string{"HS256"} }, `config: keys.algorithms: unknown algorithm "HS256"`},
		{"listen with tsnet", func(c *Config) { c.Backend = "tsnet"; c.Listen = []string{"127.0.0.1:9"} }, "listen applies to backend tailscale; with backend tsnet set tsnet.listen"},
		{"--listen with tsnet", func(c *Config) { c.Backend = "tsnet"; c.Listen = []string{":8080"}; c.TSNet.Listen = []string{":8080"} }, ""},
		{"audience alg not in keys", func(c *Config) {
			c.Keys.Algorithms = []string{"ES256"}
			c.Tokens.Algorithm = "RS256"
			c.Audiences = []audience.Config{{Name: "a", Allow: []string{"*"}}}
		}, "not one of"},
		{"ttl too short", func(c *Config) { c.Tokens.DefaultTTL = time.Second }, "default_ttl"},
		{"store", func(c *Config) { c.Keys.Store = "s3://bucket" }, "keys.store"},
		{"long socket", func(c *Config) { c.StateDir = "/" + strings.Repeat("d", 120) }, "too long"},
		{"tsnet control url", func(c *Config) { c.Backend = "tsnet"; c.TSNet.ControlURL = "ftp://x" }, "control_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(c)
			c.Provision()
			err := c.Validate()
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestProvisionDefaults(t *testing.T) {
	c := &Config{}
	c.Provision()
	if c.Backend != "tailscale" || c.Listen[0] != DefaultListen || c.Keys.Store != "file" || c.Tokens.DefaultTTL != time.Hour ||
		c.Tokens.MaxTTL != 24*time.Hour || c.Tokens.Algorithm != "ES256" || c.Admin.Socket != filepath.Join(c.StateDir, "admin.sock") {
		t.Errorf("defaults = %+v", c)
	}
	kp, err := c.KeyPolicy()
	if err != nil || kp.MaxTokenTTL != 24*time.Hour || kp.RotationPeriod != 720*time.Hour {
		t.Errorf("key policy = %+v, %v", kp, err)
	}
}

// TestExplicitZeroDurations: a written 0 is honoured where it means
// something (rotation off, no JWKS caching), refused with a reason
// elsewhere, and never silently replaced by the default.
func TestExplicitZeroDurations(t *testing.T) {
	tests := []struct {
		name, yaml string
		wantErr    string // "" for success
		check      func(t *testing.T, p keys.Policy)
	}{
		{"rotation_period 0", "keys:\n  rotation_period: 0\n", "", func(t *testing.T, p keys.Policy) {
			if p.RotationPeriod != 0 {
				t.Errorf("RotationPeriod = %v, want 0 (disabled)", p.RotationPeriod)
			}
		}},
		{"rotation_period 0s", "keys:\n  rotation_period: 0s\n", "", func(t *testing.T, p keys.Policy) {
			if p.RotationPeriod != 0 {
				t.Errorf("RotationPeriod = %v, want 0", p.RotationPeriod)
			}
		}},
		{"rotation_period 0 in JSON", `{"keys": {"rotation_period": 0}}`, "", func(t *testing.T, p keys.Policy) {
			if p.RotationPeriod != 0 {
				t.Errorf("RotationPeriod = %v, want 0", p.RotationPeriod)
			}
		}},
		{"jwks_max_age 0s", "keys:\n  jwks_max_age: 0s\n", "", func(t *testing.T, p keys.Policy) {
			if p.JWKSMaxAge != 0 {
				t.Errorf("JWKSMaxAge = %v, want 0 as written", p.JWKSMaxAge)
			}
		}},
		{"jwks_max_age 0", "keys:\n  jwks_max_age: 0\n", "", func(t *testing.T, p keys.Policy) {
			if p.JWKSMaxAge != 0 {
				t.Errorf("JWKSMaxAge = %v, want 0 as written", p.JWKSMaxAge)
			}
		}},
		{"jwks_max_age unset", "keys:\n  algorithms: [ES256]\n", "", func(t *testing.T, p keys.Policy) {
			if p.JWKSMaxAge != time.Hour {
				t.Errorf("JWKSMaxAge = %v, want the default 1h", p.JWKSMaxAge)
			}
		}},
		{"clock_skew 0s", "keys:\n  clock_skew: 0s\n", "line 2: keys.clock_skew: an explicit 0s is not allowed: clocks always differ a little", nil},
		{"clock_skew 0", "keys:\n  clock_skew: 0\n", "line 2: keys.clock_skew: an explicit 0 is not allowed", nil},
		{"default_ttl 0", "tokens:\n  default_ttl: 0\n", "line 2: tokens.default_ttl: an explicit 0 is not allowed: omit it for the default", nil},
		{"audience ttl 0s", "audiences:\n  - name: a\n    allow: ['*']\n    ttl: 0s\n", "line 4: audiences[0].ttl: an explicit 0s is not allowed: omit it to inherit tokens.default_ttl", nil},
		{"plugin cache_ttl 0s", "plugins:\n  - builtin: x\n  - builtin: y\n    cache_ttl: 0m\n", "line 4: plugins[1].cache_ttl: an explicit 0m is not allowed: omit it for the default, or write a negative duration such as -1s to disable caching", nil},
		{"etcd dial_timeout 0s", "keys:\n  etcd:\n    dial_timeout: 0s\n", "line 3: keys.etcd.dial_timeout: an explicit 0s is not allowed", nil},
		{"out of range", "keys:\n  rotation_period: 87600001h\n", "line 2: keys.rotation_period: 87600001h is out of range: a duration can be at most 2562047h", nil},
		{"lines kept after a rewrite", "keys:\n  rotation_period: 0\n  jwks_max_age: 0\n  bogus: 1\n", `line 4: unknown key "bogus" (in keys)`, nil},
		{"quoted 0 is a string", "keys:\n  rotation_period: \"0\"\n", "", func(t *testing.T, p keys.Policy) {
			if p.RotationPeriod != 0 {
				t.Errorf("RotationPeriod = %v, want 0", p.RotationPeriod)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			err := Parse([]byte(tt.yaml), &c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v, want error containing %q", tt.yaml, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.yaml, err)
			}
			c.Provision()
			p, err := c.KeyPolicy()
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, p)
		})
	}
}

// TestProvisionMakesPathsAbsolute: a relative state dir is made absolute
// before the admin socket is derived from it, and Validate changes
// nothing.
func TestProvisionMakesPathsAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c := &Config{Issuer: "https://idp.example", StateDir: "rel/state", Keys: KeysConfig{Etcd: EtcdConfig{KEKFile: "kek"}}}
	c.Provision()
	if want := filepath.Join(wd, "rel/state"); c.StateDir != want || c.Admin.Socket != filepath.Join(want, "admin.sock") {
		t.Errorf("state dir %q, admin socket %q; want both under %q", c.StateDir, c.Admin.Socket, want)
	}
	if c.Keys.Etcd.KEKFile != filepath.Join(wd, "kek") {
		t.Errorf("kek_file %q not made absolute", c.Keys.Etcd.KEKFile)
	}
	before := fmt.Sprintf("%#v", *c)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if after := fmt.Sprintf("%#v", *c); after != before {
		t.Errorf("Validate changed the config:\nbefore %s\nafter  %s", before, after)
	}
}

// TestKeyStore: keys.store chooses the backend in this one place, and the
// store configuration carries every setting its backend opens with.
func TestKeyStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want keys.StoreConfig
		err  string
	}{
		{"default", "state_dir: /srv/tsidp\n", filestore.Config{Dir: "/srv/tsidp/keys"}, ""},
		{"file", "state_dir: /srv/tsidp\nkeys:\n  store: file\n", filestore.Config{Dir: "/srv/tsidp/keys"}, ""},
		{"etcd", "keys:\n  store: etcd://10.0.0.1:2379,10.0.0.2:2379\n  etcd:\n    prefix: /idp/\n    kek_file: /etc/tsidp/kek\n    ca_file: /ca.pem\n    cert_file: /c.pem\n    key_file: /k.pem\n    dial_timeout: 3s\n    election_ttl: 4s\n",
			etcdstore.Settings{
				Endpoints: []string{"10.0.0.1:2379", "10.0.0.2:2379"}, Prefix: "/idp/", KEKFile: "/etc/tsidp/kek",
				TLS:         etcdstore.TLSFiles{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"},
				DialTimeout: 3 * time.Second, ElectionTTL: 4 * time.Second,
			}, ""},
		{"etcd without a KEK", "keys:\n  store: etcd://10.0.0.1:2379\n", nil, "kek_file (--kek-file) is required"},
		{"unknown store", "keys:\n  store: s3://bucket\n", nil, `keys.store "s3://bucket": must be "file" or`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			if err := Parse([]byte(tc.yaml), &c); err != nil {
				t.Fatal(err)
			}
			c.Provision()
			got, err := c.KeyStore()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("KeyStore() = %#v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("KeyStore() = %#v, %v; want %#v", got, err, tc.want)
			}
		})
	}
}

// TestSessionStore: login sessions live beside the keys: in the state dir
// with the file store, in the same etcd (and prefix) with etcd.
func TestSessionStore(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       session.StoreConfig
	}{
		{"file", "state_dir: /srv/tsidp\n", boltstore.Config{Path: "/srv/tsidp/sessions.db"}},
		{"etcd", "keys:\n  store: etcd://10.0.0.1:2379\n  etcd:\n    prefix: /idp/\n    kek_file: /k\n    ca_file: /ca.pem\n    dial_timeout: 3s\n",
			sessionetcd.Config{Endpoints: []string{"10.0.0.1:2379"}, Prefix: "/idp/", TLS: etcdstore.TLSFiles{CAFile: "/ca.pem"}, DialTimeout: 3 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			if err := Parse([]byte(tc.yaml), &c); err != nil {
				t.Fatal(err)
			}
			c.Provision()
			got, err := c.SessionStore()
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("SessionStore() = %#v, %v; want %#v", got, err, tc.want)
			}
		})
	}
}

// TestOIDCDocConfigs: every configuration in docs/oidc.md is valid.
func TestOIDCDocConfigs(t *testing.T) {
	blocks := docBlocks(t, "../../docs/oidc.md")
	if len(blocks) < 3 {
		t.Fatalf("docs/oidc.md has %d yaml blocks", len(blocks))
	}
	for i, b := range blocks {
		var c Config
		if err := Parse([]byte("issuer: https://idp.tail1234.ts.net\n"+b), &c); err != nil {
			t.Fatalf("docs/oidc.md block %d does not parse: %v", i, err)
		}
		c.StateDir = t.TempDir()
		c.Provision()
		if err := c.Validate(); err != nil {
			t.Errorf("docs/oidc.md block %d is invalid: %v", i, err)
		}
		if len(c.Clients) == 0 {
			t.Errorf("docs/oidc.md block %d configures no client", i)
		}
	}
}
