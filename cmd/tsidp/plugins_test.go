package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
)

// runPlugins runs "tsidp plugins ARGS..." and returns stdout, stderr and
// the error main would print.
func runPlugins(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errw bytes.Buffer
	app := &cli.App{Name: "tsidp", Commands: []*cli.Command{pluginsCommand()}, Writer: &out, ErrWriter: &errw}
	err = app.RunContext(context.Background(), append([]string{"tsidp", "plugins"}, args...))
	return out.String(), errw.String(), err
}

// buildGroupsFile builds the groups-file plugin and writes a groups file.
func buildGroupsFile(t *testing.T) (bin, sum, groups string) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "groups-file")
	if out, err := exec.Command("go", "build", "-o", bin, "../../plugins/groups-file").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sum, err := plugin.FileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	groups = filepath.Join(dir, "groups.yaml")
	os.WriteFile(groups, []byte(`groups: {eng: ["*@example.com"], ci: ["tag:ci"]}`), 0o644)
	return bin, sum, groups
}

func TestPluginsCheck(t *testing.T) {
	bin, sum, groups := buildGroupsFile(t)
	config := `{"file": "` + groups + `"}`

	stdout, stderr, err := runPlugins(t, "check", bin, "--sha256", sum, "--config", config, "--scope", "read")
	if err != nil {
		t.Fatalf("check: %v\n%s", err, stderr)
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("output is not a report: %v\n%s", err, stdout)
	}
	if rep.SHA256 != sum || !rep.Verified || rep.PID == 0 || rep.Plugin.Name != "groups-file" ||
		compact(rep.Result.Claims["groups"]) != `["eng"]` || rep.Request.Login != "alice@example.com" ||
		strings.Join(rep.Request.Scopes, ",") != "read" {
		t.Errorf("report = %s", stdout)
	}
	if !strings.Contains(stderr, "plugin groups-file: started groups-file") {
		t.Errorf("stderr = %q", stderr)
	}

	// An identity from a file; the checksum is computed and reported.
	idFile := filepath.Join(t.TempDir(), "ci.json")
	os.WriteFile(idFile, []byte(`{"Subject": "node:nCI", "NodeName": "ci.example.ts.net", "NodeID": "nCI", "Tags": ["tag:ci"], "Tagged": true}`), 0o644)
	stdout, _, err = runPlugins(t, "check", bin, "--config", config, "--identity", idFile)
	if err != nil {
		t.Fatal(err)
	}
	rep = checkReport{}
	json.Unmarshal([]byte(stdout), &rep)
	if rep.Verified || rep.SHA256 != sum || compact(rep.Result.Claims["groups"]) != `["ci"]` {
		t.Errorf("tagged report = %s", stdout)
	}
}

func TestPluginsCheckErrors(t *testing.T) {
	bin, _, groups := buildGroupsFile(t)
	badID := filepath.Join(t.TempDir(), "id.json")
	os.WriteFile(badID, []byte(`{"Subject": "user:1", "Login": "typo"}`), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"check"}, "want exactly one PATH"},
		{[]string{"check", bin, "--sha256", strings.Repeat("0", 64)}, "checksum mismatch"},
		{[]string{"check", bin}, "file is required"},
		{[]string{"check", bin, "--config", "[1]"}, "--config: want a JSON object"},
		{[]string{"check", bin, "--config", `{"file":"` + groups + `"}`, "--identity", badID}, `unknown field "Login"`},
		{[]string{"check", "/bin/sh"}, "is a shell"},
		{[]string{"check", "/nonexistent"}, "no such file"},
	}
	for _, tt := range tests {
		_, _, err := runPlugins(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "tsidp: plugins") ||
			strings.Contains(oneLine(err), "\n") {
			t.Errorf("plugins %v: %v, want one line containing %q", tt.args, err, tt.want)
		}
	}
}

func compact(b []byte) string {
	var out bytes.Buffer
	json.Compact(&out, b)
	return out.String()
}
