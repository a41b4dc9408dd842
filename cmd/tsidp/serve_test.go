package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/config"
)

// TestConfigPrecedence checks flags > environment > file > defaults, using
// the same flags and loader as `tsidp serve`.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tsidp.yaml")
	os.WriteFile(file, []byte("issuer: https://from-file.example\nstate_dir: "+dir+"\nidentity:\n  tailnet: file.ts.net\nlisten: ['127.0.0.1:9000']\n"), 0o600)

	load := func(t *testing.T, env map[string]string, args ...string) *config.Config {
		t.Helper()
		for k, v := range env {
			t.Setenv(k, v)
		}
		var got *config.Config
		app := &cli.App{Commands: []*cli.Command{{
			Name: "serve", Flags: serveFlags(),
			Action: func(c *cli.Context) error {
				var err error
				got, err = loadConfig(c)
				return err
			},
		}}}
		if err := app.Run(append([]string{"tsidp", "serve", "--config", file}, args...)); err != nil {
			t.Fatal(err)
		}
		return got
	}

	// Subtests, so that each one's environment is restored after it.
	t.Run("file", func(t *testing.T) {
		c := load(t, nil)
		if c.Issuer != "https://from-file.example" || c.Identity.Tailnet != "file.ts.net" || c.Listen[0] != "127.0.0.1:9000" || c.Backend != "tailscale" {
			t.Errorf("file only: %+v", c)
		}
	})
	t.Run("env over file", func(t *testing.T) {
		c := load(t, map[string]string{"TSIDP_ISSUER": "https://from-env.example", "TSIDP_TAILNET": "env.ts.net"})
		if c.Issuer != "https://from-env.example" || c.Identity.Tailnet != "env.ts.net" {
			t.Errorf("env over file: %+v", c)
		}
	})
	t.Run("flag over env", func(t *testing.T) {
		c := load(t, map[string]string{"TSIDP_ISSUER": "https://from-env.example"}, "--issuer", "https://from-flag.example", "--listen", "127.0.0.1:9001")
		if c.Issuer != "https://from-flag.example" || c.Listen[0] != "127.0.0.1:9001" || c.Identity.Tailnet != "file.ts.net" {
			t.Errorf("flag over env: %+v", c)
		}
	})
}
