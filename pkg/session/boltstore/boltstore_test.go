package boltstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/session/sessiontest"
)

func TestConformance(t *testing.T) {
	sessiontest.Run(t, func(t *testing.T) func() session.Store {
		path := filepath.Join(t.TempDir(), "sessions", "sessions.db")
		return func() session.Store {
			st, err := Config{Path: path}.Open()
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
	})
}

// TestFileModes: the database is private to tsidp's user.
func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	st, err := Config{Path: filepath.Join(dir, "sessions.db")}.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "sessions.db"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}
}

// TestOneProcess: a second opener of the same database fails at once with
// a reason, instead of hanging on bbolt's lock.
func TestOneProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.db")
	st, err := Config{Path: path}.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	_, err = Config{Path: path}.Open()
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second open = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second open took %v", d)
	}
}

// TestSweep: records are dropped once they ended more than
// session.Retention ago, and kept until then.
func TestSweep(t *testing.T) {
	st, err := Config{Path: filepath.Join(t.TempDir(), "s.db")}.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	code := &session.Code{ClientID: "app", Expires: now.Add(time.Minute)}
	if err := st.PutCode(ctx, session.HashOf("c"), code); err != nil {
		t.Fatal(err)
	}
	fam := &session.Family{ID: "f", Created: now, LastUsed: now, IdleTimeout: time.Hour, Expires: now.Add(48 * time.Hour)}
	if err := st.PutFamily(ctx, fam); err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeAccess(ctx, "j", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(now.Add(session.Retention)); err != nil || n != 0 {
		t.Errorf("sweep within retention removed %d, %v", n, err)
	}
	// The family ended when idle for an hour, the code after a minute,
	// the revocation after an hour.
	if n, err := st.Sweep(now.Add(session.Retention + time.Hour + time.Second)); err != nil || n != 3 {
		t.Errorf("sweep after retention removed %d, %v; want 3", n, err)
	}
	if _, err := st.Family(ctx, "f"); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("swept family: %v", err)
	}
}
