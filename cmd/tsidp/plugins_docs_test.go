package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
)

// docBlock is a fenced code block of docs/plugins.md and the marker comment
// before it, which says how the test exercises it.
type docBlock struct {
	marker string // e.g. "from: plugins/example-go/main.go", "run"
	lang   string
	body   string
	line   int
}

var fenceRE = regexp.MustCompile("(?ms)^(?:<!-- (.*?) -->\n)?```(\\w*)\n(.*?)^```$")

func docBlocks(t *testing.T, doc string) []docBlock {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	var out []docBlock
	for _, m := range fenceRE.FindAllSubmatchIndex(b, -1) {
		blk := docBlock{lang: string(b[m[4]:m[5]]), body: string(b[m[6]:m[7]]), line: 1 + bytes.Count(b[:m[0]], []byte("\n"))}
		if m[2] >= 0 {
			blk.marker = string(b[m[2]:m[3]])
		}
		out = append(out, blk)
	}
	return out
}

// shellWords splits a command line with '…' and "…" quoting.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// TestPluginsDoc exercises every snippet of docs/plugins.md: code must be
// the code in the repository, configuration must load and validate, the
// handshake example must have the documented shape, packages must be the
// ones the tests use, and commands must run.
func TestPluginsDoc(t *testing.T) {
	root, _ := filepath.Abs("../..")
	blocks := docBlocks(t, filepath.Join(root, "docs/plugins.md"))
	if len(blocks) < 12 {
		t.Fatalf("found %d code blocks in docs/plugins.md", len(blocks))
	}
	libDir := t.TempDir() // stands in for /usr/local/lib/tsidp
	for _, blk := range blocks {
		kind, arg, _ := strings.Cut(blk.marker, ": ")
		switch kind {
		case "from":
			src, err := os.ReadFile(filepath.Join(root, arg))
			if err != nil {
				t.Errorf("line %d: %v", blk.line, err)
			} else if !strings.Contains(string(src), blk.body) {
				t.Errorf("line %d: the snippet is not in %s any more; copy it again", blk.line, arg)
			}
		case "config":
			var cfg struct {
				Plugins []plugin.Config `yaml:"plugins"`
			}
			dec := yaml.NewDecoder(strings.NewReader(blk.body))
			dec.KnownFields(true)
			if err := dec.Decode(&cfg); err != nil {
				t.Errorf("line %d: %v", blk.line, err)
			}
			if len(cfg.Plugins) == 0 {
				t.Errorf("line %d: no plugins", blk.line)
			}
			if _, err := plugin.New(cfg.Plugins, plugin.Options{}); err != nil {
				t.Errorf("line %d: %v", blk.line, err)
			}
		case "handshake":
			f := strings.Split(strings.TrimSpace(blk.body), "|")
			if len(f) != 6 || f[0] != "1" || f[1] != "1" || f[2] != "unix" || f[4] != "grpc" {
				t.Errorf("line %d: handshake %q", blk.line, blk.body)
			}
		case "packages":
			words := shellWords(strings.TrimSpace(blk.body))
			for _, pkg := range words[3:] {
				if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output(); err != nil || !strings.Contains(string(out), "installed") {
					t.Errorf("line %d: package %s is not installed: %v", blk.line, pkg, err)
				}
			}
		case "regenerate":
			for _, line := range strings.Split(strings.TrimSpace(blk.body), "\n") {
				words := shellWords(line)
				switch {
				case len(words) == 3 && words[0] == "go" && words[1] == "generate":
					gen, err := os.ReadFile(filepath.Join(root, words[2], "gen.go"))
					if err != nil || !strings.Contains(string(gen), "//go:generate ./gen.sh") {
						t.Errorf("line %d: %s has no go:generate line: %v", blk.line, words[2], err)
					}
				default:
					if fi, err := os.Stat(filepath.Join(root, words[0])); err != nil || fi.Mode()&0o111 == 0 {
						t.Errorf("line %d: %s is not an executable script: %v", blk.line, words[0], err)
					}
				}
			}
		case "run":
			for _, line := range strings.Split(strings.TrimSpace(blk.body), "\n") {
				words := shellWords(line)
				for i, w := range words {
					words[i] = strings.ReplaceAll(w, "/usr/local/lib/tsidp", libDir)
				}
				if words[0] == "tsidp" {
					stdout, stderr, err := runPlugins(t, words[2:]...)
					var rep checkReport
					if err != nil || json.Unmarshal([]byte(stdout), &rep) != nil || len(rep.Result.Claims) == 0 {
						t.Errorf("line %d: %s: %v\n%s%s", blk.line, line, err, stdout, stderr)
					}
					continue
				}
				cmd := exec.Command(words[0], words[1:]...)
				cmd.Dir = root
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("line %d: %s: %v\n%s", blk.line, line, err, out)
				}
			}
		default:
			t.Errorf("line %d: code block without a marker saying how it is tested", blk.line)
		}
	}
}
