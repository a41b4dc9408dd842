// Package plugin runs tsidp's claims plugins: executables (or built-ins)
// speaking the tsidp.claims.v1 gRPC protocol through hashicorp/go-plugin.
//
// A Manager starts every configured plugin, verifies its checksum, keeps it
// healthy (health checks with deadlines, replacement of crashed and hung
// processes with backoff) and exposes each as a claims.Enricher, in
// configuration order, which is the order tsidp merges their claims in.
package plugin

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/tsidp/tsidp/pkg/claims"
	"tailscale.com/types/logger"
)

// Options are the host-wide plugin settings.
type Options struct {
	// Logf logs; nil discards.
	Logf logger.Logf
	// SocketDir is the directory in which each tsidp process keeps a
	// private subdirectory (named by its PID) of plugin sockets. Stale
	// subdirectories of dead processes are removed at Start. Default
	// $TMPDIR/tsidp-plugins-<uid>; keep it short, socket paths are limited
	// to about 100 bytes.
	SocketDir string
	// CacheSize bounds the answers cached per plugin. Default 10000.
	CacheSize int
	// HealthInterval is how often each plugin's health is checked.
	// Default 2s. A failed or timed-out call also triggers a check.
	HealthInterval time.Duration
	// HealthTimeout bounds one health check. Default 1s.
	HealthTimeout time.Duration
	// StartTimeout bounds a plugin's start: handshake, Describe and
	// Configure. Default 10s.
	StartTimeout time.Duration
	// RestartMin and RestartMax bound the exponential backoff between
	// restarts of a failing plugin. Defaults 100ms and 30s.
	RestartMin, RestartMax time.Duration
	// Builtins are plugins compiled into tsidp, by the name Config.Builtin
	// refers to.
	Builtins map[string]Register
}

func (o *Options) provision() {
	if o.Logf == nil {
		o.Logf = logger.Discard
	}
	if o.SocketDir == "" {
		o.SocketDir = filepath.Join(os.TempDir(), fmt.Sprintf("tsidp-plugins-%d", os.Getuid()))
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 2 * time.Second
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = time.Second
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	if o.RestartMin <= 0 {
		o.RestartMin = 100 * time.Millisecond
	}
	if o.RestartMax < o.RestartMin {
		o.RestartMax = max(30*time.Second, o.RestartMin)
	}
}

// maxSocketDirLen leaves room under the ~104-byte limit of a unix socket
// path for "/<pid>/s<random>/plugin<random>".
const maxSocketDirLen = 60

// Manager runs the configured plugins.
type Manager struct {
	opts    Options
	plugins []*Plugin

	mu      sync.Mutex
	runDir  string
	started bool
	closed  bool
}

// New validates cfgs (provisioning defaults) and returns a Manager that
// has not started anything yet.
func New(cfgs []Config, opts Options) (*Manager, error) {
	opts.provision()
	if len(opts.SocketDir) > maxSocketDirLen {
		return nil, fmt.Errorf("plugin: socket directory %q is longer than %d bytes; unix socket paths are short", opts.SocketDir, maxSocketDirLen)
	}
	m := &Manager{opts: opts}
	seen := make(map[string]bool)
	for i, cfg := range cfgs {
		cfg.Provision()
		if err := cfg.Validate(); err != nil {
			if cfg.Name == "" {
				return nil, fmt.Errorf("plugin: plugins[%d]: %w", i, err)
			}
			return nil, fmt.Errorf("plugin %q: %w", cfg.Name, err)
		}
		if seen[cfg.Name] {
			return nil, fmt.Errorf("plugin %q: configured twice; give each a distinct name", cfg.Name)
		}
		seen[cfg.Name] = true
		configJSON, err := json.Marshal(cfg.Config)
		if err != nil {
			return nil, fmt.Errorf("plugin %q: config: %w", cfg.Name, err)
		}
		if cfg.Config == nil {
			configJSON = []byte("{}")
		}
		var l launcher
		if cfg.Builtin != "" {
			reg, ok := opts.Builtins[cfg.Builtin]
			if !ok {
				return nil, fmt.Errorf("plugin %q: no built-in plugin %q", cfg.Name, cfg.Builtin)
			}
			l = &inProcessLauncher{register: reg, configJSON: configJSON, startTimeout: m.opts.StartTimeout}
		} else {
			sum, _ := hex.DecodeString(cfg.SHA256) // checked by Validate
			l = &processLauncher{cfg: &cfg, configJSON: configJSON, sum: sum, opts: &m.opts}
		}
		m.plugins = append(m.plugins, newPlugin(cfg, &m.opts, l))
	}
	return m, nil
}

// Start starts every plugin, in order. If one fails to start (its file is
// missing or does not match its checksum, it does not answer the
// handshake, declares a reserved claim or refuses its configuration), Start
// stops the others and returns the error: tsidp should not run without a
// configured plugin.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.closed {
		return errors.New("plugin: manager already started")
	}
	m.started = true
	if m.hasProcesses() {
		dir, err := prepareSocketDir(m.opts.SocketDir, m.opts.Logf)
		if err != nil {
			return fmt.Errorf("plugin: %w", err)
		}
		m.runDir = dir
		for _, p := range m.plugins {
			if pl, ok := p.launcher.(*processLauncher); ok {
				pl.sockets = dir
			}
		}
	}
	for i, p := range m.plugins {
		if err := p.start(ctx); err != nil {
			for _, q := range m.plugins[:i] {
				q.stop()
			}
			m.removeRunDir()
			return fmt.Errorf("plugin %q: %w", p.Name(), err)
		}
	}
	return nil
}

func (m *Manager) hasProcesses() bool {
	for _, p := range m.plugins {
		if _, ok := p.launcher.(*processLauncher); ok {
			return true
		}
	}
	return false
}

// Close stops every plugin (asking each to shut down, then killing it) and
// removes the socket directory.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var wg sync.WaitGroup
	for _, p := range m.plugins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop()
		}()
	}
	wg.Wait()
	m.removeRunDir()
	return nil
}

func (m *Manager) removeRunDir() {
	if m.runDir != "" {
		os.RemoveAll(m.runDir)
		m.runDir = ""
	}
}

// Enrichers returns the plugins as enrichers, in configuration order (the
// merge order).
func (m *Manager) Enrichers() []claims.Enricher {
	out := make([]claims.Enricher, len(m.plugins))
	for i, p := range m.plugins {
		out[i] = p
	}
	return out
}

// Plugins returns the plugins in configuration order.
func (m *Manager) Plugins() []*Plugin { return append([]*Plugin(nil), m.plugins...) }

// Health reports every plugin's state, in configuration order.
func (m *Manager) Health() []Health {
	out := make([]Health, len(m.plugins))
	for i, p := range m.plugins {
		out[i] = p.Health()
	}
	return out
}

// Ready returns an error naming the first plugin that is not serving and
// whose failures refuse tokens (on_error "deny" or "stale"). A plugin with
// on_error "omit" never makes tsidp unready: tokens are still issued, only
// without its claims.
func (m *Manager) Ready(context.Context) error {
	for _, p := range m.plugins {
		h := p.Health()
		if h.State == StateServing || h.OnError == OnErrorOmit {
			continue
		}
		if h.LastError != "" {
			return fmt.Errorf("plugin %s is %s: %s", h.Name, h.State, h.LastError)
		}
		return fmt.Errorf("plugin %s is %s", h.Name, h.State)
	}
	return nil
}

// prepareSocketDir makes base (0700, owned by this user), removes the
// directories that dead tsidp processes left in it, and returns a fresh
// directory for this process.
func prepareSocketDir(base string, logf logger.Logf) (string, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	fi, err := os.Lstat(base)
	if err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	// base may be in a shared /tmp: refuse one someone else planted.
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || (ok && int(st.Uid) != os.Getuid()) {
		return "", fmt.Errorf("socket directory %s is not a directory owned by this user", base)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(base, 0o700); err != nil {
			return "", fmt.Errorf("socket directory: %w", err)
		}
	}
	entries, err := os.ReadDir(base)
	if err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		// Our own PID's directory is stale too (PID reuse after a crash,
		// or always PID 1 in a container).
		if pid == self || !processAlive(pid) {
			if err := os.RemoveAll(filepath.Join(base, e.Name())); err == nil {
				logf("plugin: removed stale socket directory %s", filepath.Join(base, e.Name()))
			}
		}
	}
	dir := filepath.Join(base, strconv.Itoa(self))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	return dir, nil
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
