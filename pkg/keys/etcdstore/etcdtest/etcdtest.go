// Package etcdtest runs real etcd servers (the etcd binary, e.g. Debian's
// etcd-server) on loopback for tests: single members and clusters, each
// with its own data directory, stopped and killed by PID.
//
// A missing etcd binary fails the test, never skips it.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary returns the path of the etcd server binary, failing t if there is
// none.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcdtest: no etcd binary on PATH (Debian: apt-get install etcd-server): %v", err)
	}
	return p
}

// Cluster is a set of etcd members started together.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	opts    Options
	hc      *http.Client
	Members []*Member
}

// Options configure a cluster.
type Options struct {
	// Members is the number of members; default 1.
	Members int
	// TLS, if set, makes members serve clients over TLS with this
	// certificate and key, and require client certificates signed by
	// ClientCA.
	TLS *TLSFiles
}

// TLSFiles name PEM files for a TLS-serving cluster.
type TLSFiles struct {
	CertFile, KeyFile string // the members' certificate, valid for 127.0.0.1
	ClientCAFile      string // CA that signs accepted client certificates
	// HealthClient is used to poll /health; it must trust the members'
	// certificate and present a client certificate.
	HealthClient *http.Client
}

// Member is one etcd server process.
type Member struct {
	Name      string
	ClientURL string // http://127.0.0.1:port
	PeerURL   string
	DataDir   string

	c      *Cluster
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *logBuffer
}

// Start starts an n-member cluster on loopback and waits until it has a
// leader. Members are stopped when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, Options{Members: n})
}

// StartWith starts a cluster as opts say and waits until it has a leader.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	n := max(opts.Members, 1)
	c := &Cluster{t: t, bin: Binary(t), opts: opts, hc: &http.Client{Timeout: time.Second}}
	scheme := "http"
	if opts.TLS != nil {
		scheme = "https"
		c.hc = opts.TLS.HealthClient
	}
	// Data on tmpfs when the machine has one: etcd fsyncs every write, and
	// the tests measure latencies, not disks.
	base := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "tsidp-etcd-")
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	c.dir = dir
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Kill()
		}
		os.RemoveAll(dir)
	})
	ports := freePorts(t, 2*n)
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			DataDir:   filepath.Join(dir, fmt.Sprintf("m%d", i)),
			c:         c,
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.Members {
		m.start(strings.Join(initial, ","))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("etcdtest: %v\n%s", err, c.Logs())
	}
	return c
}

// Endpoints returns the members' client addresses, host:port.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		_, hostPort, _ := strings.Cut(m.ClientURL, "://")
		out = append(out, hostPort)
	}
	return out
}

// StoreURL returns the cluster as tsidp's keys.store value:
// etcd://host:port,host:port….
func (c *Cluster) StoreURL() string { return "etcd://" + strings.Join(c.Endpoints(), ",") }

// WaitHealthy waits until every running member reports a healthy cluster
// (one with a leader).
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		if err := m.WaitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Logs returns every member's recent log output, for failure messages.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, m := range c.Members {
		fmt.Fprintf(&b, "--- etcd %s:\n%s\n", m.Name, m.log.tail())
	}
	return b.String()
}

// Kill kills every member with SIGKILL.
func (c *Cluster) Kill() {
	for _, m := range c.Members {
		m.Kill()
	}
}

// Restart starts every member that is not running, on its existing data.
func (c *Cluster) Restart() {
	for _, m := range c.Members {
		if !m.Running() {
			m.Restart()
		}
	}
}

func (m *Member) start(initialCluster string) {
	t := m.c.t
	t.Helper()
	args := []string{
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "tsidp-test",
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}
	m.exec(append(args, m.c.tlsArgs()...))
}

func (c *Cluster) tlsArgs() []string {
	if c.opts.TLS == nil {
		return nil
	}
	f := c.opts.TLS
	return []string{"--cert-file", f.CertFile, "--key-file", f.KeyFile, "--trusted-ca-file", f.ClientCAFile, "--client-cert-auth"}
}

func (m *Member) exec(args []string) {
	t := m.c.t
	cmd := exec.Command(m.c.bin, args...)
	if m.log == nil {
		m.log = &logBuffer{}
	}
	cmd.Stdout, cmd.Stderr = m.log, m.log
	// The member dies with the test process, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcdtest: starting %s: %v", m.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	m.mu.Lock()
	m.cmd, m.exited = cmd, exited
	m.mu.Unlock()
}

// Running reports whether the member's process is running.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// PID returns the member's process id, 0 if it is not running.
func (m *Member) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Kill sends SIGKILL to the member and waits for it to exit.
func (m *Member) Kill() { m.signal(syscall.SIGKILL) }

// Stop sends SIGTERM and waits up to 10 s, then kills.
func (m *Member) Stop() { m.signal(syscall.SIGTERM) }

func (m *Member) signal(sig syscall.Signal) {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Restart starts a stopped member again on its data directory, as the same
// member of the same cluster.
func (m *Member) Restart() {
	if m.Running() {
		m.c.t.Fatalf("etcdtest: %s is still running", m.Name)
	}
	// With an existing data directory etcd ignores the initial-cluster
	// flags and rejoins from its write-ahead log.
	m.exec(append([]string{
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}, m.c.tlsArgs()...))
}

// WaitHealthy polls the member's /health until it reports a cluster with a
// leader.
func (m *Member) WaitHealthy(ctx context.Context) error {
	hc := m.c.hc
	for {
		if !m.Running() {
			return fmt.Errorf("etcd member %s exited", m.Name)
		}
		res, err := hc.Get(m.ClientURL + "/health")
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 && bytes.Contains(b, []byte(`"health":"true"`)) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s not healthy: %w", m.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// logBuffer keeps the last 64 KiB written to it.
type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const logKeep = 64 << 10

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > logKeep {
		l.buf = append([]byte(nil), l.buf[len(l.buf)-logKeep:]...)
	}
	return len(p), nil
}

func (l *logBuffer) tail() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}
