package main

import (
	"fmt"
	"log"
	"os"

	"github.com/urfave/cli/v2"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/sandbox"
)

func sandboxCommand() *cli.Command {
	return &cli.Command{
		Name:  "sandbox",
		Usage: "run tsidp on an in-process tailnet on loopback, to try everything offline",
		Description: `Starts a real control server, DERP and STUN on loopback, tsidp as a tsnet node, and two
client nodes: a person (gateway --listen) and a tagged device (gateway --listen-tagged).
Each gateway forwards requests through the tailnet to tsidp, so plain curl works:

   curl -d audience=sandbox http://127.0.0.1:8484/token`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: sandbox.DefaultListen, Usage: "loopback `ADDR` of the person's gateway (and the issuer URL)"},
			&cli.StringFlag{Name: "listen-tagged", Value: sandbox.DefaultListenTagged, Usage: "loopback `ADDR` of the tagged device's gateway"},
			&cli.StringFlag{Name: "listen-app", Value: sandbox.DefaultListenApp, Usage: "loopback `ADDR` of the demo web app that signs people in with tsidp"},
			&cli.StringFlag{Name: "state-dir", Usage: "state `DIR` (keys, admin socket); default a temporary directory removed on exit"},
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "configuration `FILE`; backend and issuer are set by the sandbox"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log tsidp's activity"},
		}, storeFlags()...),
		Action: func(c *cli.Context) error {
			cfg := new(config.Config)
			if p := c.String("config"); p != "" {
				var err error
				if cfg, err = config.Load(p); err != nil {
					return err
				}
			}
			// --store etcd://… runs the sandbox's tsidp as a replica of
			// that store.
			applyStoreFlags(c, cfg)
			logf := logger.Discard
			if c.Bool("verbose") {
				logf = log.New(os.Stderr, "", log.LstdFlags).Printf
			}
			fmt.Fprintln(c.App.ErrWriter, "tsidp sandbox: starting a tailnet on loopback…")
			sb, err := sandbox.Start(c.Context, sandbox.Options{
				Listen:       c.String("listen"),
				ListenTagged: c.String("listen-tagged"),
				ListenApp:    c.String("listen-app"),
				StateDir:     c.String("state-dir"),
				Config:       cfg,
				Logf:         logf,
			})
			if err != nil {
				return err
			}
			var auds []string
			for _, a := range cfg.Audiences {
				auds = append(auds, a.Name)
			}
			sb.PrintBanner(c.App.Writer, auds)
			select {
			case <-c.Context.Done():
			case err = <-sb.Daemon.Err():
			}
			fmt.Fprintln(c.App.ErrWriter, "tsidp sandbox: shutting down")
			if cerr := sb.Close(); err == nil && cerr != nil {
				err = cerr
			}
			return err
		},
	}
}
