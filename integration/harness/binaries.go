// Package harness runs real parts for tsidp's integration tests: tailscaled
// and tailscale built at the version pinned in go.mod, started as separate
// processes in userspace-networking mode against an in-process control server
// (see github.com/tsidp/tsidp/pkg/tailnet).
//
// Tests using it fail, never skip, when a part is missing: a build failure is
// a test failure, in CI (CI=true) and locally alike.
package harness

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

const tailscaleModule = "tailscale.com"

var (
	binMu             sync.Mutex
	binDaemon, binCLI string // cached per process once found or built
)

// Binaries returns the paths of tailscaled and tailscale built at the
// tailscale.com version pinned in tsidp's go.mod, building them if needed.
//
// Builds are cached in $TSIDP_CACHE_DIR/bin-<version>/, or in
// <user cache dir>/tsidp/bin-<version>/ when TSIDP_CACHE_DIR is unset.
// A cold build takes about 4 minutes on 2 cores. Concurrent callers, in this
// process or in other test binaries, build at most once: a lock file
// serializes builders, and a finished build is renamed into place atomically.
func Binaries(ctx context.Context) (tailscaled, tailscale string, err error) {
	binMu.Lock()
	defer binMu.Unlock()
	if binDaemon != "" {
		return binDaemon, binCLI, nil
	}
	ver, err := tailscaleVersion(ctx)
	if err != nil {
		return "", "", err
	}
	root, err := cacheRoot()
	if err != nil {
		return "", "", err
	}
	d, c, err := ensureBinaries(ctx, root, ver)
	if err != nil {
		return "", "", err
	}
	binDaemon, binCLI = d, c
	return d, c, nil
}

// tailscaleVersion returns the tailscale.com module version this binary was
// built with, which is the one go.mod pins; it asks the go command only when
// the build info is missing.
func tailscaleVersion(ctx context.Context) (string, error) {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path != tailscaleModule {
				continue
			}
			if m.Replace != nil {
				return "", fmt.Errorf("harness: %s is replaced by %s; cannot build pinned binaries", tailscaleModule, m.Replace.Path)
			}
			if m.Version != "" && m.Version != "(devel)" {
				return m.Version, nil
			}
		}
	}
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", tailscaleModule).Output()
	if err != nil {
		return "", fmt.Errorf("harness: finding the pinned %s version: %w", tailscaleModule, err)
	}
	ver := strings.TrimSpace(string(out))
	if ver == "" {
		return "", fmt.Errorf("harness: go list printed no %s version", tailscaleModule)
	}
	return ver, nil
}

func cacheRoot() (string, error) {
	if d := os.Getenv("TSIDP_CACHE_DIR"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("harness: no cache directory (set TSIDP_CACHE_DIR): %w", err)
	}
	return filepath.Join(d, "tsidp"), nil
}

// ensureBinaries returns valid binaries under root/bin-<ver>, building them
// if they are missing or stale.
func ensureBinaries(ctx context.Context, root, ver string) (string, string, error) {
	paths, err := ensureBuilt(ctx, root, "bin-"+ver, tailscaleModule, ver,
		[]string{"tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale"})
	if err != nil {
		return "", "", err
	}
	return paths[0], paths[1], nil
}

// GoTool returns the path of the command pkg (in module mod) built at
// version ver, building it into the cache if needed: real third-party
// programs the tests run (oauth2-proxy), built from their own go.mod as
// the authors release them, never committed as binaries. Concurrent
// callers build at most once.
func GoTool(ctx context.Context, mod, ver, pkg string) (string, error) {
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	paths, err := ensureBuilt(ctx, root, "tool-"+cmdName(pkg)+"-"+ver, mod, ver, []string{pkg})
	if err != nil {
		return "", err
	}
	return paths[0], nil
}

// ensureBuilt returns the commands pkgs (of module mod at ver) under
// root/dir, building them while holding root/dir.lock if they are missing
// or stale. A finished build is renamed into place, so no caller sees half
// of one.
func ensureBuilt(ctx context.Context, root, dir, mod, ver string, pkgs []string) ([]string, error) {
	final := filepath.Join(root, dir)
	paths := func(d string) []string {
		out := make([]string, len(pkgs))
		for i, p := range pkgs {
			out[i] = filepath.Join(d, cmdName(p))
		}
		return out
	}
	if checkBinaries(mod, ver, paths(final)...) == nil {
		return paths(final), nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another process may have finished the build while we waited.
	if checkBinaries(mod, ver, paths(final)...) == nil {
		return paths(final), nil
	}
	tmp, err := os.MkdirTemp(root, ".build-"+dir+"-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op once renamed
	if err := goInstall(ctx, tmp, ver, pkgs); err != nil {
		return nil, err
	}
	if err := checkBinaries(mod, ver, paths(tmp)...); err != nil {
		return nil, fmt.Errorf("harness: fresh build is unusable: %w", err)
	}
	// MkdirTemp makes the dir 0700; the cache is as readable as GOCACHE.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	// A stale or partial dir is only ever replaced under the lock.
	if err := os.RemoveAll(final); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("harness: installing binaries: %w", err)
	}
	return paths(final), nil
}

// cmdName is the file name go install gives the command pkg: its last
// element, or the one before a major-version suffix.
func cmdName(pkg string) string {
	name := filepath.Base(pkg)
	if len(name) >= 2 && name[0] == 'v' && strings.Trim(name[1:], "0123456789") == "" {
		return filepath.Base(filepath.Dir(pkg))
	}
	return name
}

// goInstall builds the commands into gobin. It runs outside tsidp's module
// (in gobin) so that "pkg@version" resolves the tool's own go.mod.
func goInstall(ctx context.Context, gobin, ver string, pkgs []string) error {
	args := []string{"install"}
	for _, p := range pkgs {
		args = append(args, p+"@"+ver)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = gobin
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOWORK=off", "GOFLAGS=-mod=mod")
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("harness: building %v at %s (after %v): %w\n%s",
			pkgs, ver, time.Since(t0).Round(time.Second), err, tail(out.Bytes(), 4096))
	}
	return nil
}

// checkBinaries reports whether every file is an executable built from
// module mod at ver (read from their embedded build info).
func checkBinaries(mod, ver string, files ...string) error {
	for _, p := range files {
		bi, err := buildinfo.ReadFile(p)
		if err != nil {
			return err
		}
		if bi.Main.Path != mod || bi.Main.Version != ver {
			return fmt.Errorf("%s was built from %s@%s, want %s@%s", p, bi.Main.Path, bi.Main.Version, mod, ver)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", p)
		}
	}
	return nil
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait. The lock dies with the process, so a crashed builder never
// leaves it stuck.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("harness: locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("harness: waiting for another build (%s): %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// tail returns the last n bytes of b, for error messages.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
