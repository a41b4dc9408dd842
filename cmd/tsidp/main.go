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
			clientsCommand(),
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
// ("plugins check PATH --timeout 5s"), where urfave/cli stops parsing.
func parseTrailingFlags(c *cli.Context) error {
	more, err := splitArgs(c, c.Args().Tail(), nil)
	if err != nil {
		return err
	}
	if len(more) > 0 {
		return fmt.Errorf("want exactly one argument, got also %q", more[0])
	}
	return nil
}

// splitArgs applies the flags among args and returns the other words, in
// order: urfave/cli parses no flag after the first argument, and none at
// all for a command with SkipFlagParsing. "--" ends the flags; "-" is a
// word. A word that starts with "-" and names no flag of the command is an
// error unless argLike (which may be nil) accepts it as an argument.
func splitArgs(c *cli.Context, args []string, argLike func(string) bool) ([]string, error) {
	var words []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return append(words, args[i+1:]...), nil
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			words = append(words, arg)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		f := lookupFlag(c.Command, name)
		if f == nil {
			if argLike != nil && argLike(arg) {
				words = append(words, arg)
				continue
			}
			return nil, fmt.Errorf("flag provided but not defined: -%s", name)
		}
		if !hasValue {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				value = "true"
			} else if i+1 == len(args) {
				return nil, fmt.Errorf("flag %s needs a value", arg)
			} else {
				i++
				value = args[i]
			}
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("flag %s: %w", arg, err)
		}
	}
	return words, nil
}

// lookupFlag returns cmd's flag called name (or one of its aliases), or
// nil.
func lookupFlag(cmd *cli.Command, name string) cli.Flag {
	for _, f := range cmd.Flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}
