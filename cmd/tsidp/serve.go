package main

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/daemon"
)

// Flags shared by commands that read the configuration. Each also reads an
// environment variable; a flag or variable that is set wins over the file.
var (
	configFlag   = &cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"TSIDP_CONFIG"}, Usage: "configuration `FILE` (YAML or JSON)"}
	stateDirFlag = &cli.StringFlag{Name: "state-dir", EnvVars: []string{"TSIDP_STATE_DIR"}, Usage: "state `DIR` (keys, admin socket, tsnet state); default /var/lib/tsidp"}
	storeFlag    = &cli.StringFlag{Name: "store", EnvVars: []string{"TSIDP_STORE"}, Usage: "key store: file or etcd://host:2379[,host:2379…]"}
	// The etcd store's settings; see docs/keys.md.
	etcdFlags = []cli.Flag{
		&cli.StringFlag{Name: "kek-file", EnvVars: []string{"TSIDP_KEK_FILE"}, Usage: "key-encryption key `FILE` sealing private keys in etcd (32 bytes raw, hex or base64; mode 0400)"},
		&cli.StringFlag{Name: "etcd-prefix", EnvVars: []string{"TSIDP_ETCD_PREFIX"}, Usage: "etcd key `PREFIX` (default /tsidp/)"},
		&cli.StringFlag{Name: "etcd-ca-file", EnvVars: []string{"TSIDP_ETCD_CA_FILE"}, Usage: "CA certificates (PEM `FILE`) of the etcd members; turns TLS on"},
		&cli.StringFlag{Name: "etcd-cert-file", EnvVars: []string{"TSIDP_ETCD_CERT_FILE"}, Usage: "client certificate (PEM `FILE`) for etcd; turns TLS on"},
		&cli.StringFlag{Name: "etcd-key-file", EnvVars: []string{"TSIDP_ETCD_KEY_FILE"}, Usage: "client key (PEM `FILE`) for etcd"},
	}
)

// storeFlags are the flags that choose and reach the key store.
func storeFlags() []cli.Flag { return append([]cli.Flag{storeFlag}, etcdFlags...) }

func serveFlags() []cli.Flag {
	return append([]cli.Flag{
		configFlag,
		stateDirFlag,
		&cli.StringFlag{Name: "issuer", EnvVars: []string{"TSIDP_ISSUER"}, Usage: "issuer `URL` verifiers reach tsidp at"},
		&cli.StringFlag{Name: "backend", EnvVars: []string{"TSIDP_BACKEND"}, Usage: "identity backend: tailscale (local tailscaled; the default) or tsnet (own node)"},
		&cli.StringFlag{Name: "socket", EnvVars: []string{"TSIDP_SOCKET"}, Usage: "tailscaled LocalAPI `SOCKET` (backend tailscale)"},
		&cli.StringSliceFlag{Name: "listen", EnvVars: []string{"TSIDP_LISTEN"}, Usage: "`ADDR` to serve on, repeatable: with backend tailscale a local TCP address (default 127.0.0.1:8080), with tsnet a tailnet one (default :80)"},
		&cli.StringFlag{Name: "hostname", EnvVars: []string{"TSIDP_HOSTNAME"}, Usage: "node name (backend tsnet; default tsidp)"},
		&cli.StringFlag{Name: "control-url", EnvVars: []string{"TSIDP_CONTROL_URL"}, Usage: "coordination server `URL`, e.g. Headscale (backend tsnet)"},
		&cli.StringFlag{Name: "auth-key-file", EnvVars: []string{"TSIDP_AUTH_KEY_FILE"}, Usage: "`FILE` holding the auth key (backend tsnet; else $TS_AUTHKEY)"},
		&cli.StringFlag{Name: "tailnet", EnvVars: []string{"TSIDP_TAILNET"}, Usage: "accept callers from this tailnet only"},
		&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"TSIDP_METRICS_LISTEN"}, Usage: "serve Prometheus metrics on this TCP `ADDR`"},
	}, storeFlags()...)
}

// loadConfig reads --config, applies flags and environment, provisions
// defaults and validates.
func loadConfig(c *cli.Context) (*config.Config, error) {
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return nil, err
	}
	applyFlags(c, cfg)
	cfg.Provision()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func applyFlags(c *cli.Context, cfg *config.Config) {
	set := func(name string, dst *string) {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	set("state-dir", &cfg.StateDir)
	applyStoreFlags(c, cfg)
	set("issuer", &cfg.Issuer)
	set("backend", &cfg.Backend)
	set("socket", &cfg.Tailscale.Socket)
	set("hostname", &cfg.TSNet.Hostname)
	set("control-url", &cfg.TSNet.ControlURL)
	set("auth-key-file", &cfg.TSNet.AuthKeyFile)
	set("tailnet", &cfg.Identity.Tailnet)
	set("metrics-listen", &cfg.Admin.MetricsListen)
	if c.IsSet("listen") {
		cfg.Listen = c.StringSlice("listen")
		cfg.TSNet.Listen = c.StringSlice("listen")
	}
}

// applyStoreFlags applies the flags of storeFlags that are set.
func applyStoreFlags(c *cli.Context, cfg *config.Config) {
	set := func(name string, dst *string) {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	set("store", &cfg.Keys.Store)
	set("kek-file", &cfg.Keys.Etcd.KEKFile)
	set("etcd-prefix", &cfg.Keys.Etcd.Prefix)
	set("etcd-ca-file", &cfg.Keys.Etcd.CAFile)
	set("etcd-cert-file", &cfg.Keys.Etcd.CertFile)
	set("etcd-key-file", &cfg.Keys.Etcd.KeyFile)
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the issuer",
		Description: `Runs tsidp beside a local tailscaled (--backend tailscale, the default) or as its own
tailnet node (--backend tsnet). Flags override environment variables, which override the file.`,
		Flags: serveFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			logger := log.New(os.Stderr, "", log.LstdFlags)
			d, err := daemon.Start(c.Context, cfg, daemon.Options{Version: buildVersion(), Logf: logger.Printf})
			if err != nil {
				return err
			}
			select {
			case <-c.Context.Done():
				logger.Printf("tsidp: shutting down")
			case err = <-d.Err():
			}
			start := time.Now()
			d.Close()
			logger.Printf("tsidp: stopped in %v", time.Since(start).Round(time.Millisecond))
			if err != nil {
				return fmt.Errorf("tsidp: %w", err)
			}
			return nil
		},
	}
}
