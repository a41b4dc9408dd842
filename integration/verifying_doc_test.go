package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tsidp/tsidp/pkg/sandbox"
)

// verifyingDoc is the how-to whose code blocks are the verifier programs.
const verifyingDoc = "../docs/verifying.md"

// docFenceRE matches a fenced code block and the marker comment before it
// (the convention of docs/plugins.md).
var docFenceRE = regexp.MustCompile("(?ms)^(?:<!-- (.*?) -->\n)?```(\\w*)\n(.*?)^```$")

// TestVerifyingDoc checks that docs/verifying.md shows exactly the programs
// TestVerifiers runs: every code block is a file of the repository, byte for
// byte, every verifier program is shown, and the algorithm table says what
// TestVerifiers asserts about EdDSA.
func TestVerifyingDoc(t *testing.T) {
	doc, err := os.ReadFile(verifyingDoc)
	if err != nil {
		t.Fatal(err)
	}

	shown := map[string]bool{}
	for _, m := range docFenceRE.FindAllSubmatch(doc, -1) {
		marker, body := string(m[1]), m[3]
		line := 1 + bytes.Count(doc[:bytes.Index(doc, m[0])], []byte("\n"))
		path, ok := strings.CutPrefix(marker, "from: ")
		if !ok {
			t.Errorf("%s:%d: code block without a <!-- from: FILE --> marker; every block must be a tested file", verifyingDoc, line)
			continue
		}
		want, err := os.ReadFile(filepath.Join("..", path))
		if err != nil {
			t.Errorf("%s:%d: %v", verifyingDoc, line, err)
			continue
		}
		if !bytes.Equal(body, want) {
			t.Errorf("%s:%d: block differs from %s; paste the file again", verifyingDoc, line, path)
		}
		shown[path] = true
	}
	// Indented code blocks would escape the check above.
	if regexp.MustCompile(`(?m)^\n    \S`).Match(docFenceRE.ReplaceAll(doc, nil)) {
		t.Errorf("%s has an indented code block; use a fenced block with a from: marker", verifyingDoc)
	}
	if !shown["integration/verifiers/node/package.json"] {
		t.Errorf("%s does not show the Node verifier's package.json", verifyingDoc)
	}

	rows := map[string][]string{} // program file -> table cells
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| ") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if m := regexp.MustCompile(`\]\(\.\./integration/(verifiers/[^)]+)\)`).FindStringSubmatch(line); m != nil {
			rows[m[1]] = cells
		}
	}
	yes := map[bool]string{true: "yes", false: "no"}
	for _, p := range verifierProgs {
		if !shown["integration/"+p.file] {
			t.Errorf("%s does not show %s", verifyingDoc, p.file)
		}
		cells := rows[p.file]
		// Language | Library | Tested version | RS256 | ES256 | EdDSA | Program
		if len(cells) != 7 {
			t.Errorf("%s: no table row for %s (cells %q)", verifyingDoc, p.file, cells)
			continue
		}
		if cells[0] != p.language || cells[1] != p.library {
			t.Errorf("%s: row for %s says %q / %q, want %q / %q", verifyingDoc, p.file, cells[0], cells[1], p.language, p.library)
		}
		if cells[3] != "yes" || cells[4] != "yes" || cells[5] != yes[p.eddsa] {
			t.Errorf("%s: row for %s says RS256 %s, ES256 %s, EdDSA %s; TestVerifiers asserts yes, yes, %s",
				verifyingDoc, p.file, cells[3], cells[4], cells[5], yes[p.eddsa])
		}
	}
	if len(rows) != len(verifierProgs) {
		t.Errorf("%s: %d table rows with programs, %d programs tested", verifyingDoc, len(rows), len(verifierProgs))
	}

	// Tested versions: the npm packages the lock file pins and the go-oidc
	// go.mod requires.
	lock, err := os.ReadFile("verifiers/node/package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	var locked struct {
		Packages map[string]struct{ Version string } `json:"packages"`
	}
	if err := json.Unmarshal(lock, &locked); err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goOIDC := regexp.MustCompile(`github.com/coreos/go-oidc/v3 (v\S+)`).FindSubmatch(gomod)
	if goOIDC == nil {
		t.Fatal("go.mod does not require github.com/coreos/go-oidc/v3")
	}
	for file, versions := range map[string][]string{
		"verifiers/node/jose_verify.mjs":         {locked.Packages["node_modules/jose"].Version},
		"verifiers/node/jsonwebtoken_verify.mjs": {locked.Packages["node_modules/jsonwebtoken"].Version, locked.Packages["node_modules/jwks-rsa"].Version},
		"verifiers/go/main.go":                   {string(goOIDC[1])},
	} {
		for _, v := range versions {
			if cells := rows[file]; v == "" || len(cells) != 7 || !strings.Contains(cells[2], v) {
				t.Errorf("%s: row for %s does not name the tested version %q", verifyingDoc, file, v)
			}
		}
	}

	// The example command uses the sandbox's defaults.
	if !bytes.Contains(doc, []byte("http://"+sandbox.DefaultListen+" sandbox ES256")) {
		t.Errorf("%s: the example command does not use the sandbox's address %s", verifyingDoc, sandbox.DefaultListen)
	}
}
