package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/admin"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/keys"
)

func keysCommand() *cli.Command {
	// Clipped: each subcommand appends its own flags to common.
	common := slices.Clip(append([]cli.Flag{configFlag, stateDirFlag}, storeFlags()...))
	return &cli.Command{
		Name:  "keys",
		Usage: "list, rotate, revoke, import and export signing keys",
		Description: `Talks to the running daemon over <state-dir>/admin.sock; when no daemon runs, works on
the key store directly, under its lock. Use the same --config/--state-dir/--store as the daemon.`,
		Subcommands: []*cli.Command{
			{
				Name:   "init",
				Usage:  "create the key set if the store has none (the daemon also does on first start)",
				Flags:  common,
				Action: keysInit,
			},
			{
				Name:   "list",
				Usage:  "list keys, their states and times, and the rotation status",
				Flags:  append(common, &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
				Action: keysList,
			},
			{
				Name:      "rotate",
				Usage:     "make each next key active, retire the active one and publish a new next key",
				UsageText: "tsidp keys rotate [--alg ES256]... [--force]",
				Flags: append(common,
					&cli.StringSliceFlag{Name: "alg", Usage: "rotate only this algorithm; repeatable (default: all)"},
					&cli.BoolFlag{Name: "force", Usage: "rotate even if the next key has not been published for jwks_max_age + clock_skew (verifiers with a cached JWKS may reject new tokens until they refetch)"},
				),
				Action: keysRotate,
			},
			{
				Name:      "revoke",
				Usage:     "remove a key from the JWKS at once; an active key is replaced by the published next key",
				UsageText: "tsidp keys revoke [flags] KID",
				Flags:     common,
				// A kid is base64url and starts with "-" about once in 64
				// keys: oneArg parses the flags, and takes such a kid for
				// the argument rather than an unknown flag.
				SkipFlagParsing: true,
				Action:          keysRevoke,
			},
			{
				Name:      "import",
				Usage:     "import a private key (PEM or JWK) from another issuer as the next key",
				UsageText: "tsidp keys import --alg ALG [--activate] FILE",
				Flags: append(common,
					&cli.StringFlag{Name: "alg", Usage: "algorithm the key signs with: ES256, RS256 or EdDSA (required)"},
					&cli.BoolFlag{Name: "activate", Usage: "make it the active key at once (when migrating an issuer whose verifiers already know the key)"},
				),
				Action: keysImport,
			},
			{
				Name:   "export-jwks",
				Usage:  "print the public JWKS (for static hosting)",
				Flags:  common,
				Action: keysExportJWKS,
			},
		},
	}
}

// keysInit is tsidp keys init.
func keysInit(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	return changeKeys(c, false, func(k *admin.Keys, before []keys.KeyInfo) ([]keys.KeyInfo, error) {
		if len(before) > 0 {
			fmt.Fprintln(c.App.Writer, "a key set exists already; added only what the configuration lacked")
		}
		return k.Init(c.Context)
	})
}

// keysList is tsidp keys list.
func keysList(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	return withKeys(c, true, func(k *admin.Keys) error {
		infos, st, err := k.List(c.Context)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return printJSON(c.App.Writer, map[string]any{"keys": infos, "status": st})
		}
		printKeys(c.App.Writer, infos)
		fmt.Fprint(c.App.Writer, "\n"+st.String())
		return nil
	})
}

// keysRotate is tsidp keys rotate.
func keysRotate(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	var algs []keys.Algorithm
	for _, s := range c.StringSlice("alg") {
		a, err := keys.ParseAlgorithm(s)
		if err != nil {
			return err
		}
		algs = append(algs, a)
	}
	return changeKeys(c, true, func(k *admin.Keys, _ []keys.KeyInfo) ([]keys.KeyInfo, error) {
		return k.Rotate(c.Context, algs, c.Bool("force"))
	})
}

// keysRevoke is tsidp keys revoke.
func keysRevoke(c *cli.Context) error {
	kid, err := oneArg(c, "KID (see tsidp keys list)", keys.IsKID)
	if err != nil || kid == "" {
		return err
	}
	return changeKeys(c, true, func(k *admin.Keys, before []keys.KeyInfo) ([]keys.KeyInfo, error) {
		if i := slices.IndexFunc(before, func(ki keys.KeyInfo) bool { return ki.ID == kid }); i >= 0 && before[i].State == keys.StateRevoked {
			fmt.Fprintln(c.App.Writer, revokedLine(kid, true, !k.Daemon))
			return nil, nil
		}
		after, err := k.Revoke(c.Context, kid)
		if err == nil {
			fmt.Fprintln(c.App.Writer, revokedLine(kid, false, !k.Daemon))
		}
		return after, err
	})
}

// keysImport is tsidp keys import.
func keysImport(c *cli.Context) error {
	file, err := oneArg(c, "FILE", nil)
	if err != nil || file == "" {
		return err
	}
	if c.String("alg") == "" {
		return errors.New("tsidp: keys import needs --alg (ES256, RS256 or EdDSA)")
	}
	alg, err := keys.ParseAlgorithm(c.String("alg"))
	if err != nil {
		return err
	}
	data, err := readBounded(file, 1<<20)
	if err != nil {
		return err
	}
	// Import may create the key set: migrating from another issuer
	// before tsidp's first start is a normal use.
	return withKeys(c, false, func(k *admin.Keys) error {
		ki, err := k.Import(c.Context, data, alg, c.Bool("activate"))
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "imported %s key %s as %s\n", ki.Algorithm, ki.ID, ki.State)
		return nil
	})
}

// keysExportJWKS is tsidp keys export-jwks.
func keysExportJWKS(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	return withKeys(c, true, func(k *admin.Keys) error {
		body, err := k.ExportJWKS(c.Context)
		if err != nil {
			return err
		}
		_, err = c.App.Writer.Write(body)
		return err
	})
}

// openKeys opens the key administration of the configuration c names:
// the daemon's if one answers on the admin socket, else the store's (see
// admin.OpenKeys). With mustExist, a store holding no key set is an error
// rather than a new key set: a mistyped --state-dir must not list nothing,
// export an empty JWKS or start a new history.
func openKeys(c *cli.Context, mustExist bool) (*admin.Keys, error) {
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return nil, err
	}
	applyFlags(c, cfg)
	cfg.Provision()
	kp, err := cfg.KeyPolicy()
	if err != nil {
		return nil, fmt.Errorf("tsidp: %w", err)
	}
	sc, err := cfg.KeyStore()
	if err != nil {
		return nil, err
	}
	return admin.OpenKeys(c.Context, cfg.Admin.Socket, kp, func(ctx context.Context) (keys.Store, error) {
		st, err := sc.Open(ctx, keys.OpenOptions{MustExist: mustExist})
		if errors.Is(err, keys.ErrNoKeySet) {
			return nil, fmt.Errorf("tsidp: %w, and no daemon answers on %s: check --state-dir, or --store and the keys.etcd settings (the daemon creates the key set on its first start)", err, cfg.Admin.Socket)
		}
		return st, err
	})
}

// changeKeys runs change on the keys (through the daemon or the store) and
// prints how the active keys changed. change may print lines of its own
// first; it returns nil keys when it changed nothing.
func changeKeys(c *cli.Context, mustExist bool, change func(k *admin.Keys, before []keys.KeyInfo) ([]keys.KeyInfo, error)) error {
	return withKeys(c, mustExist, func(k *admin.Keys) error {
		before, _, err := k.List(c.Context)
		if err != nil {
			return err
		}
		after, err := change(k, before)
		if err != nil || after == nil {
			return err
		}
		for _, line := range activeChanges(before, after) {
			fmt.Fprintln(c.App.Writer, line)
		}
		return nil
	})
}

// withKeys runs fn on the keys openKeys opens, and closes them.
func withKeys(c *cli.Context, mustExist bool, fn func(k *admin.Keys) error) error {
	k, err := openKeys(c, mustExist)
	if err != nil {
		return err
	}
	defer k.Close()
	return fn(k)
}

// noArgs refuses positional arguments, most often flags written after one
// (flags go before arguments).
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("tsidp: %s takes no arguments, got %q", strings.TrimPrefix(commandPath(c), "tsidp "), c.Args().First())
	}
	return nil
}

// oneArg returns the one positional argument, named what, and applies the
// flags written around it. For a command with SkipFlagParsing (keys revoke,
// whose KID may start with "-") every flag is parsed here, and a word that
// argLike accepts is the argument even if it starts with "-"; for others
// urfave/cli parsed the flags before the argument. With --help it shows
// the command's help and returns "".
func oneArg(c *cli.Context, what string, argLike func(string) bool) (string, error) {
	args := c.Args().Slice()
	var words []string
	if !c.Command.SkipFlagParsing && len(args) > 0 {
		words, args = args[:1], args[1:]
	}
	more, err := splitArgs(c, args, argLike)
	if err != nil {
		return "", usageError(c, err, true)
	}
	if c.Bool("help") {
		return "", cli.ShowCommandHelp(c.Lineage()[1], c.Command.Name)
	}
	words = append(words, more...)
	switch cmd := strings.TrimPrefix(commandPath(c), "tsidp "); {
	case len(words) == 0:
		return "", fmt.Errorf("tsidp: %s needs one %s", cmd, what)
	case len(words) > 1:
		return "", fmt.Errorf("tsidp: %s: want exactly one argument, got also %q", cmd, words[1])
	}
	return words[0], nil
}

// revokedLine says what revoking kid did. Through the daemon, the key left
// its JWKS. On the store directly (no daemon answered on the admin socket)
// only the store changed: a tsidp serving from it, unreachable over the
// socket, keeps publishing and signing with the key until it next reads the
// store.
func revokedLine(kid string, already, offline bool) string {
	switch {
	case already && !offline:
		return kid + " was already revoked: it is not in the JWKS"
	case already:
		return kid + " was already revoked in the key store"
	case !offline:
		return "revoked " + kid + ": it is no longer in the JWKS"
	}
	return "revoked " + kid + " in the key store (no tsidp answered on the admin socket): a tsidp running on this store drops it from its JWKS when it next reads the store, within about a second with the file store and at once with etcd"
}

func printKeys(w io.Writer, infos []keys.KeyInfo) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ALG\tSTATE\tKID\tCREATED\tACTIVATED\tRETIRED\tSIGNS FROM / LEAVES JWKS")
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04")
	}
	for _, k := range infos {
		when := "-"
		switch k.State {
		case keys.StateNext:
			when = ts(k.SignsFrom)
		case keys.StateRetired:
			when = ts(k.RemoveAt)
		}
		retired := k.Retired
		if k.State == keys.StateRevoked {
			retired = k.Revoked
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Algorithm, k.State, k.ID, ts(k.Created), ts(k.Activated), ts(retired), when)
	}
	tw.Flush()
}

// activeChanges describes how the active keys changed.
func activeChanges(before, after []keys.KeyInfo) []string {
	active := func(infos []keys.KeyInfo) map[keys.Algorithm]string {
		m := map[keys.Algorithm]string{}
		for _, k := range infos {
			if k.State == keys.StateActive {
				m[k.Algorithm] = k.ID
			}
		}
		return m
	}
	b, a := active(before), active(after)
	var lines []string
	for _, k := range after {
		if k.State != keys.StateActive {
			continue
		}
		if old := b[k.Algorithm]; old != a[k.Algorithm] {
			lines = append(lines, fmt.Sprintf("%s: active key %s (was %s)", k.Algorithm, k.ID, orDash(old)))
		} else {
			lines = append(lines, fmt.Sprintf("%s: active key %s (unchanged)", k.Algorithm, k.ID))
		}
	}
	return lines
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tsidp: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("tsidp: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("tsidp: %s is larger than %d bytes", path, limit)
	}
	if strings.TrimSpace(string(b)) == "" {
		return nil, fmt.Errorf("tsidp: %s is empty", path)
	}
	return b, nil
}
