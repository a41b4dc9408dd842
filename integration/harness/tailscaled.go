package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// Bounds for process lifetimes; generous for a loaded 2-core machine.
const (
	startTimeout = 30 * time.Second // process start to LocalAPI answering
	upTimeout    = 60 * time.Second // "tailscale up" to Running
	stopTimeout  = 10 * time.Second // SIGTERM to exit, before SIGKILL
	dialTimeout  = 7 * time.Second  // one LocalAPI DialTCP attempt; > one WireGuard handshake retransmit

	peerPingBound = 8 * time.Second // > one WireGuard handshake retransmit (5 s)
)

// maxSocketPath is the portable limit for unix socket paths (sun_path is
// 108 bytes on Linux, 104 on macOS, including the NUL).
const maxSocketPath = 103

// TailscaledOptions configures StartTailscaled.
type TailscaledOptions struct {
	// ControlURL is the control server's base URL; required.
	ControlURL string

	// AuthKey, if set, is passed to "tailscale up" as --auth-key.
	AuthKey string

	// Env holds extra "KEY=value" environment variables for tailscaled.
	Env []string

	// Args holds extra tailscaled flags, e.g. "--verbose=2".
	Args []string
}

// Tailscaled is one real tailscaled process in userspace-networking mode,
// with its own state directory and LocalAPI socket.
//
// Inbound tailnet TCP connections to its IP are forwarded to 127.0.0.1 on
// the same port (IPv4 only), so a server for tailnet port P listens on
// 127.0.0.1:P and resolves callers with LocalClient().WhoIs.
type Tailscaled struct {
	t       testing.TB
	bin     string // tailscaled
	cli     string // tailscale
	opts    TailscaledOptions
	dir     string // short root dir: socket, state, logs
	sock    string
	logPath string
	lc      *local.Client

	mu       sync.Mutex
	proc     *running // nil when stopped
	hostname string   // set by Up; non-empty means Start waits for Running
	ip4      netip.Addr
}

// running is one run of the tailscaled process.
type running struct {
	cmd    *exec.Cmd
	death  *os.File      // write end of TS_PARENT_DEATH_FD; closing it kills tailscaled
	exited chan struct{} // closed after Wait returns
	err    error         // Wait's result, valid after exited is closed
}

// StartTailscaled starts tailscaled for the test and stops it (and removes
// its files) at cleanup. It fails the test if the binaries are unavailable or
// the daemon does not come up; it never skips.
func StartTailscaled(ctx context.Context, t testing.TB, opts TailscaledOptions) *Tailscaled {
	t.Helper()
	if opts.ControlURL == "" {
		t.Fatal("harness: TailscaledOptions.ControlURL is required")
	}
	bin, cli, err := Binaries(ctx)
	if err != nil {
		t.Fatalf("harness: tailscale binaries: %v", err)
	}
	// Unix socket paths must be short; t.TempDir() paths can be too long.
	base := "/tmp"
	if runtime.GOOS == "windows" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "tsd-")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	d := &Tailscaled{
		t:       t,
		bin:     bin,
		cli:     cli,
		opts:    opts,
		dir:     dir,
		sock:    filepath.Join(dir, "ts.sock"),
		logPath: filepath.Join(dir, "tailscaled.log"),
	}
	if len(d.sock) > maxSocketPath {
		os.RemoveAll(dir)
		t.Fatalf("harness: socket path %q is longer than %d bytes", d.sock, maxSocketPath)
	}
	d.lc = &local.Client{Socket: d.sock, UseSocketOnly: true}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("harness: stopping tailscaled: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: tailscaled log (%s), last 8 KiB:\n%s", d.dir, d.LogTail(8<<10))
		}
		os.RemoveAll(dir)
	})
	for _, sub := range []string{"state", "logs"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatalf("harness: %v", err)
		}
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// Socket returns the path of tailscaled's LocalAPI unix socket.
func (d *Tailscaled) Socket() string { return d.sock }

// LocalClient returns a LocalAPI client that only uses this daemon's socket.
func (d *Tailscaled) LocalClient() *local.Client { return d.lc }

// IP4 returns the node's tailnet IPv4 address, known once Up has succeeded.
func (d *Tailscaled) IP4() netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ip4
}

// Start starts the tailscaled process and waits until its LocalAPI answers.
// If Up succeeded before (a restart after Stop), it also waits until the
// node, reusing its state directory, is Running again and its live peers
// can reach it (see awaitPeers); that can take about 5 s.
func (d *Tailscaled) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.proc != nil {
		d.mu.Unlock()
		return errors.New("harness: tailscaled already running")
	}
	r, err := d.spawn()
	if err != nil {
		d.mu.Unlock()
		return err
	}
	d.proc = r
	wasUp := d.hostname != ""
	d.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := d.waitFor(ctx, r, "LocalAPI", func(st *ipnstate.Status) bool { return true }); err != nil {
		return err
	}
	if !wasUp {
		return nil
	}
	if err := d.waitRunning(ctx, r); err != nil {
		return err
	}
	d.awaitPeers(ctx)
	return nil
}

// awaitPeers TSMP-pings every peer through WireGuard until each has answered
// or peerPingBound passes, so that when Start returns live peers can reach
// the restarted node at once. Without this, about half of the first dials
// from a peer after a restart lose their WireGuard handshake initiation and
// wait out a retransmit (REKEY_TIMEOUT, 5 s); paying that here makes the
// "back up" moment well defined. Peers that are gone (closed test nodes stay
// in the netmap) just use up the bound.
func (d *Tailscaled) awaitPeers(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, peerPingBound)
	defer cancel()
	st, err := d.lc.Status(ctx)
	if err != nil {
		return
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		silent []string
	)
	for _, p := range st.Peer {
		if len(p.TailscaleIPs) == 0 {
			continue
		}
		wg.Go(func() {
			for {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				res, err := d.lc.Ping(pctx, p.TailscaleIPs[0], tailcfg.PingTSMP)
				cancel()
				if err == nil && res.Err == "" {
					return
				}
				select {
				case <-ctx.Done():
					mu.Lock()
					silent = append(silent, p.HostName)
					mu.Unlock()
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	if len(silent) > 0 {
		d.t.Logf("harness: after restart, peers %v did not answer TSMP pings within %v", silent, peerPingBound)
	}
}

// spawn starts a tailscaled process. d.mu must be held.
func (d *Tailscaled) spawn() (*running, error) {
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "\n=== harness: starting tailscaled at %s ===\n", time.Now().Format(time.RFC3339Nano))

	// tailscaled exits when this pipe's write end closes, i.e. when the
	// test process dies, even by SIGKILL.
	deathR, deathW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	defer deathR.Close()

	cmd := exec.Command(d.bin,
		"--tun=userspace-networking",
		"--statedir="+filepath.Join(d.dir, "state"),
		"--socket="+d.sock,
		"--port=0",
		"--no-logs-no-support",
	)
	cmd.Args = append(cmd.Args, d.opts.Args...)
	cmd.Env = append(cleanEnv(os.Environ()),
		"TS_LOGS_DIR="+filepath.Join(d.dir, "logs"),
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1", // don't pause the control client for lack of a default route
		"TS_DISABLE_PORTMAPPER=1",
		"TS_NETCHECK_GENERATE_204_URL="+strings.TrimSuffix(d.opts.ControlURL, "/")+"/generate_204",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1", // never talk to the real control plane
		"TS_PARENT_DEATH_FD=3",
	)
	cmd.Env = append(cmd.Env, d.opts.Env...)
	cmd.ExtraFiles = []*os.File{deathR}
	cmd.Stdout, cmd.Stderr = logf, logf // files: no copying goroutines to wait for
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	r := &running{cmd: cmd, death: deathW, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits,
		// not the process; keep this thread for the child's lifetime so
		// the Go runtime cannot retire it under us.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		r.err = cmd.Wait()
		close(r.exited)
	}()
	if err := <-started; err != nil {
		deathW.Close()
		return nil, fmt.Errorf("harness: starting tailscaled: %w", err)
	}
	return r, nil
}

// Stop stops tailscaled: SIGTERM, then SIGKILL if it has not exited within
// a bounded wait. The state directory is kept, so Start brings the same node
// back. Stopping a stopped daemon is a no-op.
func (d *Tailscaled) Stop() error {
	d.mu.Lock()
	r := d.proc
	d.proc = nil
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	defer r.death.Close()

	select {
	case <-r.exited:
		return fmt.Errorf("harness: tailscaled had already exited: %v", r.err)
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return nil
	case <-time.After(stopTimeout):
	}
	r.cmd.Process.Kill()
	select {
	case <-r.exited:
		return fmt.Errorf("harness: tailscaled ignored SIGTERM for %v; killed", stopTimeout)
	case <-time.After(stopTimeout):
		return fmt.Errorf("harness: tailscaled (pid %d) did not exit after SIGKILL", r.cmd.Process.Pid)
	}
}

// Up runs "tailscale up" against the control server and waits until the
// backend is Running with an IPv4 address.
func (d *Tailscaled) Up(ctx context.Context, hostname string, advertiseTags []string) error {
	d.mu.Lock()
	r := d.proc
	d.mu.Unlock()
	if r == nil {
		return errors.New("harness: tailscaled is not running")
	}
	ctx, cancel := context.WithTimeout(ctx, upTimeout)
	defer cancel()

	args := []string{
		"--socket=" + d.sock, "up",
		"--login-server=" + d.opts.ControlURL,
		"--hostname=" + hostname,
		"--reset",            // Up may be called again with other flags
		"--accept-dns=false", // a test node has no business with OS DNS
		"--timeout=" + upTimeout.String(),
	}
	if len(advertiseTags) > 0 {
		args = append(args, "--advertise-tags="+strings.Join(advertiseTags, ","))
	}
	if d.opts.AuthKey != "" {
		args = append(args, "--auth-key="+d.opts.AuthKey)
	}
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = cleanEnv(os.Environ())
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("harness: tailscale up --hostname=%s: %w\n%s", hostname, err, out.Bytes())
	}
	d.mu.Lock()
	d.hostname = hostname
	d.mu.Unlock()
	return d.waitRunning(ctx, r)
}

// waitRunning waits until the backend is Running with an IPv4 address and a
// home DERP region, and records the address.
func (d *Tailscaled) waitRunning(ctx context.Context, r *running) error {
	var ip netip.Addr
	err := d.waitFor(ctx, r, "BackendState Running", func(st *ipnstate.Status) bool {
		if st.BackendState != ipn.Running.String() || st.Self == nil || st.Self.Relay == "" {
			return false
		}
		for _, a := range st.TailscaleIPs {
			if a.Is4() {
				ip = a
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.ip4 = ip
	d.mu.Unlock()
	return nil
}

// waitFor polls the LocalAPI status until ok returns true, the process
// exits, or ctx ends.
func (d *Tailscaled) waitFor(ctx context.Context, r *running, what string, ok func(*ipnstate.Status) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := d.lc.StatusWithoutPeers(sctx)
		cancel()
		if err == nil && ok(st) {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("state %s", st.BackendState)
		}
		select {
		case <-r.exited:
			return fmt.Errorf("harness: tailscaled exited while waiting for %s: %v\n%s", what, r.err, d.LogTail(4096))
		case <-ctx.Done():
			return fmt.Errorf("harness: waiting for tailscaled %s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// HTTPClient returns a client whose connections are dialed through this
// tailscaled (LocalAPI DialTCP), so requests come from this node. Use it with
// tailnet IPs or MagicDNS names.
func (d *Tailscaled) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:           d.dialTCP,
			ResponseHeaderTimeout: 15 * time.Second,
			IdleConnTimeout:       30 * time.Second,
		},
	}
}

// dialTCP dials through the LocalAPI with a short per-attempt timeout and
// one retry: a few tailnet dials stall when the peer closed first.
func (d *Tailscaled) dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("harness: cannot dial %s through tailscaled", network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("harness: bad port in %q", addr)
	}
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, dialTimeout)
		c, err := d.lc.DialTCP(actx, host, uint16(port))
		cancel()
		if err == nil || attempt == 1 || ctx.Err() != nil {
			if err != nil {
				return nil, fmt.Errorf("harness: dial %s via %s: %w", addr, d.sock, err)
			}
			return c, nil
		}
	}
}

// LogTail returns up to the last n bytes of tailscaled's output.
func (d *Tailscaled) LogTail(n int) string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(tail(b, n))
}

// cleanEnv drops proxy settings from env: everything here is on loopback,
// and a proxy must never see tailnet or control traffic.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		}
		out = append(out, kv)
	}
	return out
}
