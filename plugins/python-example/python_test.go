// Package pythonexample tests the Python example plugin: tsidp runs it as
// it runs any plugin, and its generated stubs match the protocol.
package pythonexample

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk/sdktest"
)

const python = "/usr/bin/python3" // Debian's, which sees python3-grpcio

var roles = map[string]any{
	"roles": map[string]any{
		"alice@example.com": []string{"dev", "admin"},
		"tag:ci":            []string{"deployer"},
	},
	"deny_tags": []string{"tag:quarantine"},
}

func requirePython(t *testing.T) {
	t.Helper()
	out, err := exec.Command(python, "-c", "import grpc, grpc_tools, google.protobuf, cryptography").CombinedOutput()
	if err != nil {
		t.Fatalf("%s lacks the plugin's modules (apt-get install -y python3-grpcio python3-grpc-tools python3-protobuf python3-cryptography): %v\n%s", python, err, out)
	}
}

func scriptPath(t *testing.T) string {
	p, err := filepath.Abs("plugin.py")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStubsUpToDate regenerates the Python stubs and compares them with
// the committed ones, so the protocol and gen/ cannot drift apart.
func TestStubsUpToDate(t *testing.T) {
	requirePython(t)
	dir := t.TempDir()
	if out, err := exec.Command("./gen.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.py"))
	if len(files) != 6 {
		t.Fatalf("gen.sh wrote %d files", len(files))
	}
	for _, f := range files {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("gen", filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("gen/%s is out of date (run plugins/python-example/gen.sh): %v", filepath.Base(f), err)
		}
	}
}

func checkAnswers(t *testing.T, p *plugin.Plugin) {
	t.Helper()
	ctx := context.Background()
	if d := p.Description(); d.Name != "python-example" || d.Version != "1.0.0" || !d.Cacheable || strings.Join(d.Claims, ",") != "roles" {
		t.Errorf("Description = %+v", d)
	}
	res, err := p.Enrich(ctx, sdktest.Request(sdktest.Person("alice@example.com"), "aud"))
	if err != nil || sdktest.Claim(res, "roles") != `["admin","dev"]` {
		t.Errorf("alice: %+v, %v", res, err)
	}
	res, err = p.Enrich(ctx, sdktest.Request(sdktest.Tagged("ci", "tag:ci"), "aud"))
	if err != nil || sdktest.Claim(res, "roles") != `["deployer"]` {
		t.Errorf("ci: %+v, %v", res, err)
	}
	res, err = p.Enrich(ctx, sdktest.Request(sdktest.Tagged("old", "tag:quarantine"), "aud"))
	if err != nil || !res.Deny || res.Reason != "device is quarantined" {
		t.Errorf("quarantined: %+v, %v", res, err)
	}
}

// TestPythonPlugin runs plugin.py through tsidp's host: handshake with
// AutoMTLS, health checks, answers, crash and restart, graceful shutdown
// through go-plugin's controller.
func TestPythonPlugin(t *testing.T) {
	requirePython(t)
	m, err := plugin.New([]plugin.Config{{Name: "py", Path: scriptPath(t), SHA256: sha(t, scriptPath(t)), Config: roles}},
		plugin.Options{SocketDir: shortDir(t), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer m.Close()
	p := m.Plugins()[0]
	checkAnswers(t, p)

	pid := p.Health().PID
	cmdline, _ := os.ReadFile("/proc/" + itoa(pid) + "/cmdline")
	if !strings.Contains(string(cmdline), "plugin.py") {
		t.Errorf("plugin process %d runs %q", pid, cmdline)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for h := p.Health(); h.Restarts != 1 || h.State != plugin.StateServing; h = p.Health() {
		if time.Now().After(deadline) {
			t.Fatalf("not restarted: %+v", h)
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkAnswers(t, p)

	// Close asks the plugin to shut down over gRPC; if the controller did
	// not work, go-plugin would wait 2s and kill it.
	pid = p.Health().PID
	start := time.Now()
	m.Close()
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("Close took %v: the plugin did not shut down when asked", d)
	}
	if err := syscall.Kill(pid, 0); err == nil && !zombie(pid) {
		t.Errorf("plugin %d still running after Close", pid)
	}
}

func TestPythonConfigureError(t *testing.T) {
	requirePython(t)
	m, err := plugin.New([]plugin.Config{{Name: "py", Path: scriptPath(t), SHA256: sha(t, scriptPath(t)),
		Config: map[string]any{"role": "x"}}}, plugin.Options{SocketDir: shortDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "unknown config keys: role") {
		t.Errorf("Start = %v", err)
	}
}

// TestRunByHand shows the plugin explains itself instead of hanging.
func TestRunByHand(t *testing.T) {
	requirePython(t)
	out, err := exec.Command(scriptPath(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "This is a tsidp plugin") {
		t.Errorf("run by hand: %v, %s", err, out)
	}
}

// TestZipapp packs the plugin, its helper and stubs into one executable
// file, so that the sha256 in tsidp's configuration covers all its code.
func TestZipapp(t *testing.T) {
	requirePython(t)
	src := t.TempDir()
	for _, f := range []string{"plugin.py", "tsidp_plugin.py"} {
		copyFile(t, f, filepath.Join(src, f))
	}
	os.Mkdir(filepath.Join(src, "gen"), 0o755)
	gens, _ := filepath.Glob("gen/*.py")
	for _, f := range gens {
		copyFile(t, f, filepath.Join(src, f))
	}
	pyz := filepath.Join(t.TempDir(), "python-example.pyz")
	if out, err := exec.Command(python, "-m", "zipapp", src, "-o", pyz, "-p", python, "-m", "plugin:main").CombinedOutput(); err != nil {
		t.Fatalf("zipapp: %v\n%s", err, out)
	}
	checkAnswers(t, sdktest.StartBinary(t, plugin.Config{Name: "pyz", Path: pyz, Config: roles}))
}

func copyFile(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, path string) string {
	s, err := plugin.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "py")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func zombie(pid int) bool {
	b, _ := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

func itoa(n int) string { return strconv.Itoa(n) }
