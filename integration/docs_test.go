package integration

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/sandbox"
)

// docBlocks returns the fenced blocks of one language in a doc file.
func docBlocks(t *testing.T, path, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestQuickstartSandboxSnippets runs the quickstart's sandbox snippets, as
// written, against the built binary (ports substituted so the test does not
// collide with a sandbox a developer may be running).
func TestQuickstartSandboxSnippets(t *testing.T) {
	blocks := docBlocks(t, "../docs/quickstart.md", "sh")
	if len(blocks) < 3 {
		t.Fatalf("quickstart has %d sh blocks", len(blocks))
	}
	if strings.TrimSpace(blocks[0]) != "go run ./cmd/tsidp sandbox" {
		t.Fatalf("first quickstart command = %q", blocks[0])
	}
	listen, tagged, state := freeAddr(t), freeAddr(t), shortTempDir(t)
	_, out, stderr := startProcess(t, nil, "sandbox", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", state)
	waitForLine(t, out, "Press Ctrl-C", 90*time.Second)

	subst := strings.NewReplacer("127.0.0.1:8484", listen, "127.0.0.1:8485", tagged, "go run ./cmd/tsidp", tsidpBinary(t))
	run := func(line string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", subst.Replace(line))
		cmd.Env = append(os.Environ(), "STATE_DIR="+state)
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, stderr)
		}
		return string(b)
	}

	// Block 2: the curl commands.
	lines := strings.Split(strings.TrimSpace(blocks[1]), "\n")
	if len(lines) != 4 {
		t.Fatalf("curl block has %d lines", len(lines))
	}
	for i, want := range []string{"user:", "node:"} {
		var ta tokenAnswer
		if err := json.Unmarshal([]byte(run(lines[i])), &ta); err != nil || ta.AccessToken == "" {
			t.Fatalf("%s: %+v %v", lines[i], ta, err)
		}
		c := verifyGoJose(t, httpClient(), "http://"+listen, ta.AccessToken, "ES256", "sandbox")
		if !strings.HasPrefix(c["sub"].(string), want) {
			t.Errorf("%s: sub = %v, want prefix %s", lines[i], c["sub"], want)
		}
	}
	var disc map[string]any
	if err := json.Unmarshal([]byte(run(lines[2])), &disc); err != nil || disc["issuer"] != "http://"+listen {
		t.Errorf("discovery: %v %v", disc, err)
	}
	if !strings.Contains(run(lines[3]), `"kid"`) {
		t.Error("jwks has no keys")
	}

	// Block 3: keys list, then rotate (retried while the next key is too new).
	keysLines := strings.Split(strings.TrimSpace(blocks[2]), "\n")
	if !strings.Contains(run(keysLines[0]), "active") {
		t.Error("keys list shows no active key")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		cmd := exec.Command("bash", "-c", subst.Replace(keysLines[1]))
		cmd.Env = append(os.Environ(), "STATE_DIR="+state)
		out, err := cmd.CombinedOutput()
		if err == nil {
			if !strings.Contains(string(out), "active key") {
				t.Errorf("rotate output: %s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys rotate: %v: %s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestQuickstartConfigIsValid parses the quickstart's config file.
func TestQuickstartConfigIsValid(t *testing.T) {
	blocks := docBlocks(t, "../docs/quickstart.md", "yaml")
	if len(blocks) != 2 {
		t.Fatalf("%d yaml blocks, want the tailscaled and the tsnet files", len(blocks))
	}
	for i, b := range blocks {
		var c config.Config
		if err := config.Parse([]byte(b), &c); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		c.StateDir = t.TempDir()
		c.Provision()
		if err := c.Validate(); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if c.Backend == "tsnet" && (c.Issuer != "" || len(c.TSNet.Listen) != 1 || c.TSNet.Listen[0] != ":80") {
			t.Errorf("block %d: the tsnet file sets issuer %q and serves on %q; the quickstart says the issuer is derived and the port is 80", i, c.Issuer, c.TSNet.Listen)
		}
	}
}

// TestClaimsDocGrants runs the tailnet grants example of docs/claims.md:
// tsidp configured with its YAML, the policy file's capability values set
// in the sandbox's control server. (Test control hands the values to every
// peer; the example's src and dst are for a real control plane.)
func TestClaimsDocGrants(t *testing.T) {
	yamls, jsons := docBlocks(t, "../docs/claims.md", "yaml"), docBlocks(t, "../docs/claims.md", "json")
	if len(yamls) != 1 || len(jsons) < 1 {
		t.Fatalf("claims.md has %d yaml and %d json blocks", len(yamls), len(jsons))
	}
	var cfg config.Config
	if err := config.Parse([]byte(yamls[0]), &cfg); err != nil {
		t.Fatal(err)
	}
	var policyFile struct {
		Grants []struct {
			App map[string][]json.RawMessage `json:"app"`
		} `json:"grants"`
	}
	if err := json.Unmarshal([]byte(jsons[0]), &policyFile); err != nil {
		t.Fatalf("the policy file example: %v", err)
	}
	if len(policyFile.Grants) != 1 || len(policyFile.Grants[0].App[cfg.Grants.Capability]) == 0 {
		t.Fatalf("the policy file example grants nothing under %q", cfg.Grants.Capability)
	}
	aud := cfg.Audiences[0].Name

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{Listen: freeAddr(t), ListenTagged: freeAddr(t), StateDir: shortTempDir(t), Config: &cfg, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	hc := httpClient()

	// The person matches no allow rule: closed.
	if status, ta, _ := postToken(t, hc, sb.Gateway.URL(), url.Values{"audience": {aud}}); status != 403 {
		t.Fatalf("before the grant: %d %+v", status, ta)
	}
	var caps []tailcfg.RawMessage
	for _, v := range policyFile.Grants[0].App[cfg.Grants.Capability] {
		caps = append(caps, tailcfg.RawMessage(v))
	}
	sb.Control.Server().SetGlobalAppCaps(tailcfg.PeerCapMap{tailcfg.PeerCapability(cfg.Grants.Capability): caps})
	var (
		status int
		ta     tokenAnswer
	)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		status, ta, _ = postToken(t, hc, sb.Gateway.URL(), url.Values{"audience": {aud}})
		if status == 200 || time.Now().After(deadline) {
			break
		}
	}
	// As the doc says: the audience opens, the claims arrive, the
	// lifetime is capped at an hour.
	if status != 200 || ta.ExpiresIn != 3600 {
		t.Fatalf("with the grant: %d %+v; want a token for an hour", status, ta)
	}
	c := verifyGoJose(t, hc, sb.Issuer(), ta.AccessToken, "ES256", aud)
	if got, _ := json.Marshal(c["groups"]); string(got) != `["eng"]` {
		t.Errorf("groups = %s, want [\"eng\"]", got)
	}
}
