// Package sdktest runs tsidp claims plugins in tests, through the same host
// code tsidp uses: the protocol client, the claim checks (undeclared,
// reserved and oversize claims are refused), caching and error policy.
//
// Start runs a Plugin value in process, for fast unit tests. Build and
// StartBinary run the real executable, handshake and all.
package sdktest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk"
	"github.com/tsidp/tsidp/pkg/identity"
)

// Start runs p in process with config as its "config" object and returns
// it as tsidp sees it. It fails the test if the plugin does not start (for
// example, Configure returns an error or a reserved claim is declared).
// The plugin is stopped when the test ends. Answers are not cached.
func Start(t testing.TB, p sdk.Plugin, config map[string]any) *plugin.Plugin {
	t.Helper()
	return start(t, plugin.Config{Name: "sdktest", Builtin: "sdktest", Config: config, CacheTTL: -1},
		plugin.Options{Builtins: map[string]plugin.Register{
			"sdktest": func(s grpc.ServiceRegistrar) { sdk.RegisterServer(s, p) },
		}})
}

// Build compiles the Go package pkg (a path or pattern go build accepts,
// e.g. "." or "./plugins/groups-file") into a temporary directory and
// returns the executable's path and hex SHA-256.
func Build(t testing.TB, pkg string) (path, sha256 string) {
	t.Helper()
	name := filepath.Base(pkg)
	if name == "." || name == "/" {
		name = "plugin"
	}
	path = filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", path, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	sum, err := plugin.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, sum
}

// StartBinary starts the plugin executable at cfg.Path (cfg.SHA256 is
// computed if empty) and returns it as tsidp sees it. Its log lines go to
// t.Log. The process is stopped when the test ends.
func StartBinary(t testing.TB, cfg plugin.Config) *plugin.Plugin {
	t.Helper()
	if cfg.SHA256 == "" {
		sum, err := plugin.FileSHA256(cfg.Path)
		if err != nil {
			t.Fatal(err)
		}
		cfg.SHA256 = sum
	}
	if cfg.Name == "" {
		cfg.Name = "sdktest"
	}
	dir, err := os.MkdirTemp("", "sdkt") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return start(t, cfg, plugin.Options{SocketDir: dir})
}

func start(t testing.TB, cfg plugin.Config, opts plugin.Options) *plugin.Plugin {
	t.Helper()
	// t.Log panics once the test is over; a plugin may still log
	// while it is being stopped.
	var done atomic.Bool
	opts.Logf = func(format string, args ...any) {
		if !done.Load() {
			t.Logf(format, args...)
		}
	}
	m, err := plugin.New([]plugin.Config{cfg}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done.Store(true)
		m.Close()
	})
	return m.Plugins()[0]
}

// Person returns the identity of a person logged in as login on a node
// named "laptop".
func Person(login string) *identity.Identity {
	return &identity.Identity{
		Subject:     "user:1001",
		UserID:      "1001",
		LoginName:   login,
		DisplayName: strings.Split(login, "@")[0],
		NodeName:    "laptop.example.ts.net",
		NodeID:      "nLAPTOP1CNTRL",
		Tailnet:     "example.ts.net",
	}
}

// Tagged returns the identity of a tagged device named host.
func Tagged(host string, tags ...string) *identity.Identity {
	return &identity.Identity{
		Subject:  "node:n" + host + "CNTRL",
		NodeName: host + ".example.ts.net",
		NodeID:   "n" + host + "CNTRL",
		Tailnet:  "example.ts.net",
		Tags:     tags,
		Tagged:   true,
	}
}

// Request returns a request for id and audience.
func Request(id *identity.Identity, audience string, scopes ...string) *claims.Request {
	return &claims.Request{Identity: id, Audience: audience, Scopes: scopes}
}

// Claim returns the JSON value of the claim name in res, or "".
func Claim(res *claims.Result, name string) string {
	if res == nil {
		return ""
	}
	for _, c := range res.Claims {
		if c.Name == name {
			return string(c.Value)
		}
	}
	return ""
}
