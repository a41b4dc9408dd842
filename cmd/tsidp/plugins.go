package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/identity"
)

func pluginsCommand() *cli.Command {
	return &cli.Command{
		Name:  "plugins",
		Usage: "work with claims plugins",
		Subcommands: []*cli.Command{{
			Name:  "check",
			Usage: "start a plugin, print its description and its answer for one identity",
			UsageText: "tsidp plugins check PATH [--sha256 HEX] [--config JSON|@FILE] [--identity FILE]\n" +
				"   [--audience AUD] [--scope S]... [--arg A]... [--env NAME]... [--timeout D]",
			Description: "The plugin runs as tsidp runs it (no shell, AutoMTLS, only --env variables) " +
				"and its answer goes through tsidp's checks: refused claims are reported on stderr. " +
				"Without --sha256, the file's checksum is printed for the configuration.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "sha256", Usage: "expected hex SHA-256 of PATH"},
				&cli.StringFlag{Name: "config", Usage: "the plugin's config object, as `JSON` or @file.json"},
				&cli.StringFlag{Name: "identity", Usage: "JSON `FILE` with the caller (identity.Identity fields); default: alice@example.com on a laptop"},
				&cli.StringFlag{Name: "audience", Value: "https://service.example.com", Usage: "the requested audience"},
				&cli.StringSliceFlag{Name: "scope", Usage: "a requested scope (repeatable)"},
				&cli.StringSliceFlag{Name: "arg", Usage: "an argument for the plugin (repeatable)"},
				&cli.StringSliceFlag{Name: "env", Usage: "name of an environment variable passed to the plugin (repeatable)"},
				&cli.DurationFlag{Name: "timeout", Value: 2 * time.Second, Usage: "timeout of the enrichment call"},
			},
			Action: pluginsCheck,
		}},
	}
}

// checkReport is what "tsidp plugins check" prints.
type checkReport struct {
	Path     string             `json:"path"`
	SHA256   string             `json:"sha256"`
	Verified bool               `json:"sha256_verified"`
	PID      int                `json:"pid"`
	Plugin   plugin.Description `json:"plugin"`
	Request  checkRequest       `json:"request"`
	Result   checkResult        `json:"result"`
	Elapsed  string             `json:"elapsed"`
}

type checkRequest struct {
	Subject  string   `json:"subject"`
	Login    string   `json:"login_name,omitempty"`
	Node     string   `json:"node"`
	Tags     []string `json:"tags,omitempty"`
	Audience string   `json:"audience"`
	Scopes   []string `json:"scopes,omitempty"`
}

type checkResult struct {
	Deny   bool                       `json:"deny"`
	Reason string                     `json:"reason,omitempty"`
	Claims map[string]json.RawMessage `json:"claims"`
	MaxTTL string                     `json:"max_ttl,omitempty"`
}

func pluginsCheck(c *cli.Context) error {
	if c.NArg() == 0 {
		return errors.New("tsidp: plugins check: want exactly one PATH")
	}
	if err := parseTrailingFlags(c); err != nil {
		return fmt.Errorf("tsidp: plugins check: %w", err)
	}
	path, err := filepath.Abs(c.Args().First())
	if err != nil {
		return fmt.Errorf("tsidp: plugins check: %w", err)
	}
	cfg := plugin.Config{
		Path:    path, // the plugin's name in logs and errors is the file's
		SHA256:  c.String("sha256"),
		Args:    c.StringSlice("arg"),
		Env:     c.StringSlice("env"),
		Timeout: c.Duration("timeout"),
	}
	if cfg.Config, err = checkConfig(c.String("config")); err != nil {
		return fmt.Errorf("tsidp: plugins check: --config: %w", err)
	}
	id, err := checkIdentity(c.String("identity"))
	if err != nil {
		return fmt.Errorf("tsidp: plugins check: --identity: %w", err)
	}
	req := &claims.Request{Identity: id, Audience: c.String("audience"), Scopes: c.StringSlice("scope")}
	logf := func(format string, args ...any) { fmt.Fprintf(c.App.ErrWriter, format+"\n", args...) }
	pr, err := plugin.Probe(c.Context, cfg, req, plugin.Options{Logf: logf})
	if err != nil {
		return fmt.Errorf("tsidp: plugins check: %w", err)
	}
	rep := checkReport{
		Path:     path,
		SHA256:   pr.SHA256,
		Verified: cfg.SHA256 != "",
		PID:      pr.PID,
		Plugin:   pr.Description,
		Request: checkRequest{Subject: id.Subject, Login: id.LoginName, Node: id.NodeName, Tags: id.Tags,
			Audience: req.Audience, Scopes: req.Scopes},
		Result:  checkResult{Deny: pr.Result.Deny, Reason: pr.Result.Reason, Claims: map[string]json.RawMessage{}},
		Elapsed: pr.Elapsed.Round(time.Microsecond).String(),
	}
	for _, cl := range pr.Result.Claims {
		rep.Result.Claims[cl.Name] = cl.Value
	}
	if pr.Result.MaxTTL > 0 {
		rep.Result.MaxTTL = pr.Result.MaxTTL.String()
	}
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// checkConfig reads --config: a JSON object, or @FILE holding one.
func checkConfig(s string) (map[string]any, error) {
	if s == "" {
		return nil, nil
	}
	if name, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		s = string(b)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("want a JSON object: %w", err)
	}
	return m, nil
}

// checkIdentity reads an identity.Identity from a JSON file, refusing
// unknown fields so that a typo does not silently test someone else.
func checkIdentity(file string) (*identity.Identity, error) {
	if file == "" {
		return &identity.Identity{
			Subject:     "user:1001",
			UserID:      "1001",
			LoginName:   "alice@example.com",
			DisplayName: "Alice Example",
			NodeName:    "laptop.example.ts.net",
			NodeID:      "nLAPTOP1CNTRL",
			Tailnet:     "example.ts.net",
		}, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	id := &identity.Identity{}
	if err := dec.Decode(id); err != nil {
		return nil, err
	}
	if id.Subject == "" {
		return nil, errors.New("the identity has no Subject")
	}
	return id, nil
}
