package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk/sdktest"
	"github.com/tsidp/tsidp/pkg/identity"
)

const testFile = `
groups:
  eng: ["*@example.com", "tag:ci"]
  admins: ["user:Alice@example.com", "node:bastion"]
  contractors: ["*@contractor.example", "user:bob@example.com"]
  builders: ["node:build-1.example.ts.net", "tag:builder"]
`

func TestGroups(t *testing.T) {
	table, err := Parse([]byte(testFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		caller Caller
		want   string
	}{
		{"glob and user", Caller{Login: "alice@example.com", NodeName: "laptop.example.ts.net"}, "admins,eng"},
		{"case-insensitive login", Caller{Login: "BOB@Example.com"}, "contractors,eng"},
		{"other domain", Caller{Login: "eve@evil.example"}, ""},
		{"glob does not cross domains", Caller{Login: "x@example.com.evil"}, ""},
		{"node by host name", Caller{Login: "eve@evil.example", NodeName: "bastion.example.ts.net"}, "admins"},
		{"node by full name", Caller{Tagged: true, NodeName: "build-1.example.ts.net", Tags: []string{"tag:x"}}, "builders"},
		{"tagged by tag", Caller{Tagged: true, NodeName: "runner.example.ts.net", Tags: []string{"tag:ci", "tag:builder"}}, "builders,eng"},
		{"tagged devices match no login glob", Caller{Tagged: true, NodeName: "x.example.ts.net"}, ""},
		{"people match no tag", Caller{Login: "carol@elsewhere.example", Tags: []string{"tag:ci"}}, ""},
		{"full name with a trailing dot", Caller{Tagged: true, NodeName: "build-1.example.ts.net.", Tags: []string{"tag:x"}}, "builders"},
		{"full name in another tailnet", Caller{Tagged: true, NodeName: "build-1.other.ts.net", Tags: []string{"tag:x"}}, ""},
		{"full name is not a prefix", Caller{Tagged: true, NodeName: "build-1.example.ts.net.evil", Tags: []string{"tag:x"}}, ""},
		{"host name is not a full name", Caller{Tagged: true, NodeName: "build-1", Tags: []string{"tag:x"}}, ""},
		// Nodes shared in from another tailnet: names and tags are that
		// tailnet's, logins are global.
		{"sharee node by host name", Caller{Login: "eve@evil.example", NodeName: "bastion.other.ts.net", Sharee: true}, ""},
		{"sharee node by full name", Caller{Tagged: true, NodeName: "build-1.example.ts.net", Tags: []string{"tag:x"}, Sharee: true}, ""},
		{"sharee by tag", Caller{Tagged: true, NodeName: "runner.other.ts.net", Tags: []string{"tag:ci", "tag:builder"}, Sharee: true}, ""},
		{"sharee person by login", Caller{Login: "alice@example.com", NodeName: "bastion.other.ts.net", Sharee: true}, "admins,eng"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(table.Groups(&tt.caller), ","); got != tt.want {
				t.Errorf("Groups = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{`groups: {eng: ["tags:ci"]}`, `unknown kind "tags"`},
		{`groups: {eng: ["[a-"]}`, "syntax error in pattern"},
		{`groups: {eng: [""]}`, "empty member"},
		{`groups: {eng: ["user:"]}`, "nothing after"},
		{`group: {eng: ["x"]}`, "field group not found"},
		{`groups: {"a b": ["x"]}`, "spaces"},
		{`{"groups": {"eng": "not a list"}}`, "cannot unmarshal"},
	}
	for _, tt := range tests {
		if _, err := Parse([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", tt.in, err, tt.want)
		}
	}
	if tb, err := Parse([]byte(`{"groups": {"eng": ["*@example.com"]}}`)); err != nil || len(tb.names) != 1 {
		t.Errorf("JSON file: %v", err)
	}
}

// writeAtomic replaces path the way config management tools do.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func groupsOf(t *testing.T, p *plugin.Plugin, id *identity.Identity) string {
	t.Helper()
	res, err := p.Enrich(context.Background(), sdktest.Request(id, "aud"))
	if err != nil {
		t.Fatal(err)
	}
	return sdktest.Claim(res, "groups")
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "groups.yaml")
	writeAtomic(t, file, testFile)
	// A long poll interval: the reload below must come from file events.
	p := sdktest.Start(t, &groupsPlugin{}, map[string]any{"file": file, "poll_interval": "1h"})
	alice := sdktest.Person("alice@example.com")
	if got := groupsOf(t, p, alice); got != `["admins","eng"]` {
		t.Fatalf("groups = %s", got)
	}
	if got := groupsOf(t, p, sdktest.Tagged("runner", "tag:ci")); got != `["eng"]` {
		t.Errorf("tagged groups = %s", got)
	}
	shared := sdktest.Tagged("runner", "tag:ci")
	shared.Sharee = true
	if got := groupsOf(t, p, shared); got != "" {
		t.Errorf("shared-in tagged node: groups = %s, want none", got)
	}

	writeAtomic(t, file, `groups: {ops: ["alice@example.com"]}`)
	eventually(t, "the renamed file to load", func() bool { return groupsOf(t, p, alice) == `["ops"]` })

	// A broken file keeps the previous groups.
	writeAtomic(t, file, `groups: {ops: ["tags:x"]}`)
	time.Sleep(200 * time.Millisecond)
	if got := groupsOf(t, p, alice); got != `["ops"]` {
		t.Errorf("after a broken file: groups = %s, want the previous ones", got)
	}

	// In-place writes are seen too; no group means no claim.
	if err := os.WriteFile(file, []byte(`groups: {ops: []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rewritten file to load", func() bool { return groupsOf(t, p, alice) == "" })
}

// TestReloadWaitsForWriter rewrites the file in place in two steps, with a
// pause longer than the event debounce and the poll interval in between.
// The half-written file parses and would put everyone whose login starts
// with "dev" in eng; no caller may ever see that table.
func TestReloadWaitsForWriter(t *testing.T) {
	const (
		first  = "groups:\n  eng:\n    - dev*"
		second = "@example.com\n  done: [\"*@example.com\"]\n"
	)
	devil, dev := sdktest.Person("devil@evil.example"), sdktest.Person("dev@example.com")
	half, err := Parse([]byte(first))
	if err != nil || len(half.Groups(&Caller{Login: devil.LoginName})) == 0 {
		t.Fatalf("the half-written file should parse and widen eng: %v", err)
	}

	// The writer pauses 120ms: well within a settle delay widened from
	// 250ms, so that a CPU-starved CI machine stretching the pause does
	// not make the half-written file look settled.
	old := settleDelay
	settleDelay = 600 * time.Millisecond
	t.Cleanup(func() { settleDelay = old })

	file := filepath.Join(t.TempDir(), "groups.yaml")
	writeAtomic(t, file, "groups:\n  eng:\n    - ops@example.com\n")
	p := sdktest.Start(t, &groupsPlugin{}, map[string]any{"file": file, "poll_interval": "20ms"})

	var widened atomic.Bool
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := p.Enrich(context.Background(), sdktest.Request(devil, "aud"))
			if err == nil && sdktest.Claim(res, "groups") != "" {
				widened.Store(true)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(first)
	time.Sleep(120 * time.Millisecond) // > the 50ms debounce and the poll
	f.WriteString(second)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the complete file to load", func() bool { return groupsOf(t, p, dev) == `["done","eng"]` })
	close(stop)
	<-done
	if widened.Load() {
		t.Errorf("a caller got the groups of the half-written file")
	}
	if got := groupsOf(t, p, devil); got != "" {
		t.Errorf("devil: groups = %s", got)
	}
}

func TestConfigureErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`groups: {eng: ["tags:x"]}`), 0o644)
	for _, tt := range []struct {
		cfg  string
		want string
	}{
		{`{}`, "file is required"},
		{`{"file": "` + filepath.Join(dir, "missing") + `"}`, "no such file"},
		{`{"file": "` + bad + `"}`, `unknown kind "tags"`},
		{`{"file": "x", "pol_interval": "1s"}`, `unknown field "pol_interval"`},
		{`{"file": "x", "poll_interval": 5}`, "duration string"},
	} {
		err := (&groupsPlugin{}).Configure(context.Background(), []byte(tt.cfg))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Configure(%s) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// TestBinary runs the built plugin as tsidp does, with a JSON groups file,
// a stat-poll reload and caching bounded by the plugin's cache_ttl.
func TestBinary(t *testing.T) {
	path, sum := sdktest.Build(t, ".")
	file := filepath.Join(t.TempDir(), "groups.json")
	writeAtomic(t, file, `{"groups": {"eng": ["*@example.com"]}}`)
	p := sdktest.StartBinary(t, plugin.Config{
		Name: "groups", Path: path, SHA256: sum,
		Config: map[string]any{"file": file, "poll_interval": "100ms", "cache_ttl": "200ms"},
	})
	if d := p.Description(); d.Name != "groups-file" || !d.Cacheable || strings.Join(d.Claims, ",") != "groups" {
		t.Errorf("Description = %+v", d)
	}
	alice := sdktest.Person("alice@example.com")
	if got := groupsOf(t, p, alice); got != `["eng"]` {
		t.Fatalf("groups = %s", got)
	}
	writeAtomic(t, file, `{"groups": {"eng": ["*@example.com"], "ops": ["user:alice@example.com"]}}`)
	eventually(t, "the new file through the cache", func() bool { return groupsOf(t, p, alice) == `["eng","ops"]` })
}
