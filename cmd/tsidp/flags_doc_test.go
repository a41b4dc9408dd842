package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestConfigDocFlagTable: the flag table of docs/config.md lists exactly the
// flags of `tsidp serve`, each with its environment variable.
func TestConfigDocFlagTable(t *testing.T) {
	b, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| `--([a-z-]+)`(?: \\(repeatable\\))? \\| `([A-Z_]+)`").FindAllStringSubmatch(string(b), -1)
	doc := map[string]string{}
	for _, r := range rows {
		doc[r[1]] = r[2]
	}
	if len(doc) < 15 {
		t.Fatalf("found only %d flag rows in docs/config.md", len(doc))
	}
	code := map[string]string{}
	for _, f := range serveFlags() {
		sf, ok := f.(interface{ GetEnvVars() []string })
		if !ok {
			t.Fatalf("flag %v has no env vars", f.Names())
		}
		code[f.Names()[0]] = strings.Join(sf.GetEnvVars(), ",")
	}
	for name, env := range code {
		if doc[name] != env {
			t.Errorf("--%s (%s): docs/config.md says %q", name, env, doc[name])
		}
	}
	for name := range doc {
		if _, ok := code[name]; !ok {
			t.Errorf("docs/config.md lists --%s, which tsidp serve does not have", name)
		}
	}
	// The store flags are on every command that opens the store.
	for _, cmd := range append(keysCommand().Subcommands, sandboxCommand()) {
		var names []string
		for _, f := range cmd.Flags {
			names = append(names, f.Names()[0])
		}
		for _, f := range storeFlags() {
			if !slices.Contains(names, f.Names()[0]) {
				t.Errorf("tsidp %s lacks --%s", cmd.Name, f.Names()[0])
			}
		}
	}
}
