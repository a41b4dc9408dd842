package daemon

import (
	"context"
	"io"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tailscale.com/tsweb/varz"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

// fullDisk fails every Save while full is set, as a full disk would. It
// is a fake for that one error path, which the real stores cannot be
// driven into here (it takes a tiny mounted file system).
type fullDisk struct {
	keys.Store
	full atomic.Bool
}

func (s *fullDisk) Save(ctx context.Context, set *keys.Set) error {
	if s.full.Load() {
		return syscall.ENOSPC
	}
	return s.Store.Save(ctx, set)
}

// TestRotationOverdueReported: when scheduled rotation fails (the disk is
// full), the daemon's "rotation" readiness check degrades and the
// tsidp_store_rotation_overdue gauges say so, while the "store" check
// stays ok; both clear once a rotation succeeds.
func TestRotationOverdueReported(t *testing.T) {
	dir := t.TempDir()
	fs, err := filestore.Open(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	st := &fullDisk{Store: fs}
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256}}
	p.Provision()
	p.JWKSMaxAge, p.ClockSkew, p.RotationPeriod = 100*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond
	ss := newStoreState(st, t.Logf)
	m, err := keys.NewManager(testCtx(t), st, p, t.Logf, ss.managerOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	st.full.Store(true)
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	ss.start(ctx, m, func(f func()) { wg.Go(f) })
	wg.Go(func() { m.Run(ctx) })
	publishStoreMetrics(ss)

	checks := map[string]func(context.Context) error{}
	for _, c := range ss.readyChecks() {
		if !c.Degrades {
			t.Errorf("check %s fails readiness; a key store problem only degrades it", c.Name)
		}
		checks[c.Name] = c.Check
	}
	if checks["rotation"] == nil {
		t.Fatal(`no "rotation" readiness check`)
	}
	metric := func(name string) string {
		rec := httptest.NewRecorder()
		varz.Handler(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(string(b))
		if m == nil {
			t.Fatalf("no metric %s in:\n%s", name, b)
		}
		return m[1]
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for start := time.Now(); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	waitFor("the rotation check to fail", func() bool { return checks["rotation"](ctx) != nil })
	if err := checks["rotation"](ctx); !strings.Contains(err.Error(), "scheduled rotation of ES256 is overdue") || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("rotation check: %v", err)
	}
	if err := checks["store"](ctx); err != nil {
		t.Errorf("store check with a full disk: %v", err)
	}
	if v := metric("tsidp_store_rotation_overdue"); v != "1" {
		t.Errorf("tsidp_store_rotation_overdue = %s while rotation fails", v)
	}
	metric("tsidp_store_rotation_overdue_seconds")

	st.full.Store(false)
	m.Poke() // as the next tick would
	waitFor("the rotation check to pass", func() bool { return checks["rotation"](ctx) == nil })
	if v := metric("tsidp_store_rotation_overdue"); v != "0" {
		t.Errorf("tsidp_store_rotation_overdue = %s after a rotation succeeded", v)
	}
	if v := metric("tsidp_store_rotation_overdue_seconds"); v != "0" {
		t.Errorf("tsidp_store_rotation_overdue_seconds = %s after a rotation succeeded", v)
	}
}
