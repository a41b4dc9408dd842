// Command tsidp issues JWTs to callers on a tailnet, using tailscaled's WhoIs
// as the identity provider. See README.md and docs/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// it comes from the module's build info.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, oneLine(err))
		os.Exit(exitCode(err))
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:                 "tsidp",
		Usage:                "issue JWTs to callers on a tailnet, with tailscaled's WhoIs as the identity provider",
		Version:              buildVersion(),
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Commands: []*cli.Command{
			serveCommand(),
			sandboxCommand(),
			keysCommand(),
			tokenCommand(),
			pluginsCommand(),
			versionCommand(),
		},
		// Usage errors get one line too, not the whole help text.
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return fmt.Errorf("usage: %w (see tsidp %s --help)", err, c.Command.Name)
		},
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			fmt.Fprintln(c.App.Writer, "tsidp", buildVersion())
			return nil
		},
	}
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// oneLine renders err as a single line prefixed "tsidp: ", as the CLI
// promises: operators grep logs, and multi-line errors break that.
func oneLine(err error) string {
	s := err.Error()
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == '\n' || r == '\r' {
			r = ' '
		}
		out = append(out, r)
	}
	s = string(out)
	if len(s) < 6 || s[:6] != "tsidp:" {
		s = "tsidp: " + s
	}
	return s
}
