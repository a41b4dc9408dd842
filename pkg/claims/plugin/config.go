package plugin

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// OnError is what a plugin's Enricher answers when the plugin cannot: it
// crashed, hung past its deadline, returned an error or an oversize result.
type OnError string

const (
	// OnErrorDeny refuses the token: Enrich returns an error wrapping
	// ErrUnavailable, which tsidp's server turns into a 503. The default.
	OnErrorDeny OnError = "deny"
	// OnErrorOmit issues the token without this plugin's claims.
	OnErrorOmit OnError = "omit"
	// OnErrorStale answers with the last good result for the same caller,
	// audience and scopes if it is younger than StaleMax, and otherwise
	// behaves like OnErrorDeny.
	OnErrorStale OnError = "stale"
)

// Defaults of Config.
const (
	DefaultTimeout  = 500 * time.Millisecond
	DefaultCacheTTL = 30 * time.Second
	DefaultStaleMax = 5 * time.Minute
	// MaxTimeout bounds Config.Timeout: a token request should never wait
	// longer than this for one plugin.
	MaxTimeout = 30 * time.Second
)

// Config configures one plugin, as written under "plugins:" in tsidp's
// configuration file. The order of plugins is the order their claims are
// merged in.
type Config struct {
	// Name identifies the plugin in logs, errors and health reports.
	// Default: the base name of Path.
	Name string `yaml:"name" json:"name"`
	// Path is the absolute path of the plugin executable. tsidp executes
	// it directly, never through a shell; arguments go in Args.
	Path string `yaml:"path" json:"path"`
	// SHA256 is the hex SHA-256 of the file at Path; required. tsidp
	// refuses to start a plugin whose file does not match.
	SHA256 string `yaml:"sha256" json:"sha256"`
	// Builtin names a plugin compiled into tsidp (Options.Builtins)
	// instead of Path. It runs in process over the same protocol.
	Builtin string `yaml:"builtin" json:"builtin,omitempty"`
	// Args are passed to the plugin executable.
	Args []string `yaml:"args" json:"args,omitempty"`
	// Env lists names of tsidp's environment variables passed through to
	// the plugin. The plugin sees no other variable of tsidp's
	// environment, only these and go-plugin's own.
	Env []string `yaml:"env" json:"env,omitempty"`
	// Config is passed to the plugin's Configure as a JSON object.
	Config map[string]any `yaml:"config" json:"config,omitempty"`
	// Timeout bounds each call to the plugin. Default 500ms.
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
	// OnError is "deny" (default), "omit" or "stale".
	OnError OnError `yaml:"on_error" json:"on_error"`
	// StaleMax bounds the age of a result OnErrorStale may reuse.
	// Default 5m.
	StaleMax time.Duration `yaml:"stale_max" json:"stale_max"`
	// CacheTTL bounds how long an answer of a cacheable plugin is reused
	// for the same caller, audience and scopes; the plugin may ask for
	// less, never more. Default 30s; negative disables caching.
	CacheTTL time.Duration `yaml:"cache_ttl" json:"cache_ttl"`
}

// Provision fills in defaults.
func (c *Config) Provision() {
	if c.Name == "" {
		switch {
		case c.Builtin != "":
			c.Name = c.Builtin
		case c.Path != "":
			c.Name = strings.TrimSuffix(filepath.Base(c.Path), filepath.Ext(c.Path))
		}
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.OnError == "" {
		c.OnError = OnErrorDeny
	}
	if c.StaleMax == 0 {
		c.StaleMax = DefaultStaleMax
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	c.SHA256 = strings.ToLower(strings.TrimSpace(c.SHA256))
}

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// shells are interpreters that would run a command line. A plugin run
// through one is a grandchild of tsidp: killing the shell orphans it, and
// go-plugin's Kill can hang on the pipes it still holds.
var shells = map[string]bool{
	"sh": true, "bash": true, "dash": true, "zsh": true, "ksh": true, "mksh": true,
	"ash": true, "csh": true, "tcsh": true, "fish": true, "busybox": true,
}

// Validate checks a provisioned Config. It does not touch the file system
// beyond resolving symbolic links of Path; Start checks the file itself.
func (c *Config) Validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("name %q: use 1-64 letters, digits, '.', '_' or '-'", c.Name)
	}
	switch {
	case c.Builtin != "" && (c.Path != "" || c.SHA256 != "" || len(c.Args) > 0 || len(c.Env) > 0):
		return errors.New("builtin excludes path, sha256, args and env")
	case c.Builtin != "":
	case c.Path == "":
		return errors.New("path is required")
	default:
		if err := checkPath(c.Path); err != nil {
			return err
		}
		if c.SHA256 == "" {
			return errors.New("sha256 is required (tsidp plugins check PATH prints it)")
		}
		if b, err := hex.DecodeString(c.SHA256); err != nil || len(b) != 32 {
			return fmt.Errorf("sha256 %q is not 64 hex digits", c.SHA256)
		}
	}
	for _, e := range c.Env {
		if !envNameRE.MatchString(e) {
			return fmt.Errorf("env: %q is not a variable name (list names only; values come from tsidp's environment)", e)
		}
		if strings.HasPrefix(e, "PLUGIN_") || e == "TSIDP_PLUGIN" {
			return fmt.Errorf("env: %s is set by the plugin handshake", e)
		}
	}
	if _, err := json.Marshal(c.Config); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	switch {
	case c.Timeout < 0 || c.Timeout > MaxTimeout:
		return fmt.Errorf("timeout %v: must be between 0 and %v", c.Timeout, MaxTimeout)
	case c.StaleMax < 0:
		return fmt.Errorf("stale_max %v is negative", c.StaleMax)
	}
	switch c.OnError {
	case OnErrorDeny, OnErrorOmit, OnErrorStale:
	default:
		return fmt.Errorf("on_error %q: want deny, omit or stale", c.OnError)
	}
	return nil
}

// checkPath refuses paths that are command lines or shells.
func checkPath(p string) error {
	if strings.ContainsAny(p, " \t\n") {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("path %q looks like a command line: it must be an executable file, run without a shell; put arguments in args", p)
		}
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("path %q is not absolute", p)
	}
	real := p
	if r, err := filepath.EvalSymlinks(p); err == nil {
		real = r
	}
	for _, q := range []string{p, real} {
		if shells[filepath.Base(q)] {
			return fmt.Errorf("path %q is a shell: plugins are executed directly, because a plugin behind a shell outlives tsidp's kill; point path at the plugin executable", p)
		}
	}
	return nil
}
