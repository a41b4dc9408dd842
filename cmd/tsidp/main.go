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
	"slices"
	"strings"
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
	app := &cli.App{
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
		OnUsageError: usageError,
		// "tsidp bogus" is an error, not a help topic.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return &exitError{2, fmt.Errorf("tsidp: no command %q (see tsidp --help)", c.Args().First())}
			}
			return cli.ShowAppHelp(c)
		},
	}
	setUsageErrors(app.Commands)
	return app
}

// usageError makes a usage error (an unknown flag, a bad flag value) one
// line that points at the help, instead of urfave/cli's whole help text.
func usageError(c *cli.Context, err error, _ bool) error {
	return &exitError{2, fmt.Errorf("tsidp: %w (see %s --help)", err, commandPath(c))}
}

// unknownCommand is the action of a command with subcommands: without
// one it shows the help, with an unknown one it fails in one line.
func unknownCommand(c *cli.Context) error {
	if c.NArg() > 0 {
		return &exitError{2, fmt.Errorf("tsidp: no command %q (see %s --help)", strings.Join(append(strings.Fields(commandPath(c))[1:], c.Args().First()), " "), commandPath(c))}
	}
	return cli.ShowSubcommandHelp(c)
}

// commandPath is the command line that leads to c's command, e.g.
// "tsidp keys revoke".
func commandPath(c *cli.Context) string {
	var names []string
	for _, x := range c.Lineage() {
		if x.Command != nil && x.Command.Name != "" && x.Command.Name != "tsidp" {
			names = append(names, x.Command.Name)
		}
	}
	slices.Reverse(names)
	return strings.Join(append([]string{"tsidp"}, names...), " ")
}

func setUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		if c.OnUsageError == nil {
			c.OnUsageError = usageError
		}
		if len(c.Subcommands) > 0 && c.Action == nil {
			c.Action = unknownCommand
		}
		setUsageErrors(c.Subcommands)
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

// parseTrailingFlags applies flags given after the one positional argument
// ("keys revoke KID --state-dir X"), where urfave/cli stops parsing.
func parseTrailingFlags(c *cli.Context) error {
	rest := c.Args().Tail()
	for i := 0; i < len(rest); i++ {
		arg := rest[i]
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			return fmt.Errorf("want exactly one argument, got also %q", arg)
		}
		name, value, ok := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !ok {
			if isBoolFlag(c.Command, name) {
				value = "true"
			} else if i+1 == len(rest) {
				return fmt.Errorf("flag %s needs a value", arg)
			} else {
				i++
				value = rest[i]
			}
		}
		if err := c.Set(name, value); err != nil {
			return fmt.Errorf("flag %s: %w", arg, err)
		}
	}
	return nil
}

func isBoolFlag(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		if bf, ok := f.(*cli.BoolFlag); ok && slices.Contains(bf.Names(), name) {
			return true
		}
	}
	return false
}
