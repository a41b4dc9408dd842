package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/client"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:      "token",
		Usage:     "fetch a token for an audience (run on a tailnet node)",
		UsageText: "tsidp token --audience AUD [--url URL] [--scope S] [--ttl DURATION] [--json]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "audience", Aliases: []string{"a"}, Usage: "the token's audience (required)"},
			&cli.StringFlag{Name: "url", EnvVars: []string{"TSIDP_URL"}, Usage: "tsidp's `URL` (its issuer)"},
			&cli.StringFlag{Name: "scope", Usage: "space-separated scopes"},
			&cli.DurationFlag{Name: "ttl", Usage: "requested lifetime (clamped by tsidp)"},
			&cli.BoolFlag{Name: "json", Usage: "print the whole answer as JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.String("audience") == "" {
				return errors.New("tsidp: token needs --audience")
			}
			if c.NArg() > 0 {
				return fmt.Errorf("tsidp: token takes no arguments, got %q", c.Args().First())
			}
			if c.String("url") == "" {
				return errors.New("tsidp: --url (or $TSIDP_URL) is required")
			}
			cl := &client.Client{URL: c.String("url")}
			t, err := cl.Token(c.Context, client.Request{
				Audience: c.String("audience"),
				Scope:    c.String("scope"),
				TTL:      c.Duration("ttl"),
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(t)
			}
			_, err = fmt.Fprintln(c.App.Writer, t.AccessToken)
			return err
		},
	}
}
