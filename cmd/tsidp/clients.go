package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/session"
)

func clientsCommand() *cli.Command {
	return &cli.Command{
		Name:  "clients",
		Usage: "work with the OpenID Provider's clients",
		Subcommands: []*cli.Command{{
			Name:  "secret",
			Usage: "make a client secret: print it (for the application) and its hash (for tsidp's configuration)",
			Description: "The secret is 256 random bits. tsidp keeps only its SHA-256 (secret_sha256 in the client's\n" +
				"configuration), so the configuration file does not give the secret away.",
			Action: func(c *cli.Context) error {
				if err := noArgs(c); err != nil {
					return err
				}
				s := session.NewSecret()
				fmt.Fprintf(c.App.Writer, "client_secret: %s\nsecret_sha256: %s\n", s, clients.SecretHash(s))
				return nil
			},
		}},
	}
}
