package filestore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// t0 is the start of every test's fake timeline.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testPolicy returns the default policy for algs (all if none).
func testPolicy(algs ...keys.Algorithm) keys.Policy {
	p := keys.Policy{Algorithms: algs}
	p.Provision()
	return p
}

// ensured returns a new set with Ensure applied at t0.
func ensured(t testing.TB, p keys.Policy) *keys.Set {
	t.Helper()
	s := &keys.Set{}
	if err := s.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	return s
}

// count returns how many keys of alg are in state st.
func count(s *keys.Set, alg keys.Algorithm, st keys.State) int {
	n := 0
	for _, k := range s.Keys {
		if k.Algorithm == alg && k.State == st {
			n++
		}
	}
	return n
}

// marshal encodes s, to compare sets.
func marshal(t *testing.T, s *keys.Set) []byte {
	t.Helper()
	b, err := keys.MarshalSet(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// keyDir returns a fresh key directory path. t.TempDir itself is 0755,
// which the file store refuses.
func keyDir(t *testing.T) string { return filepath.Join(t.TempDir(), "keys") }

func newTestFileStore(t *testing.T, dir string) *Store {
	t.Helper()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func perm(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestFileStorePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "keys")
	st := newTestFileStore(t, dir)
	if _, err := keys.Update(testCtx(t), st, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) }); err != nil {
		t.Fatal(err)
	}
	if got := perm(t, dir); got != 0o700 {
		t.Errorf("key directory mode %04o; want 0700", got)
	}
	if got := perm(t, st.Path()); got != 0o600 {
		t.Errorf("key file mode %04o; want 0600", got)
	}
	if got := perm(t, filepath.Join(dir, lockFileName)); got != 0o600 {
		t.Errorf("lock file mode %04o; want 0600", got)
	}
}

func TestFileStoreRefusesAccessibleDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir)
	if err == nil || !strings.Contains(err.Error(), "mode 0750") || !strings.Contains(err.Error(), "chmod 700 "+dir) {
		t.Errorf("Open(0750 dir) = %v; want a refusal naming the mode and the fix", err)
	}
	if got := perm(t, dir); got != 0o750 {
		t.Errorf("NewFileStore changed the directory mode to %04o; it should refuse, not fix", got)
	}

	os.Chmod(dir, 0o700)
	file := filepath.Join(dir, setFileName)
	if err := os.WriteFile(file, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(file, 0o644)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "chmod 600 "+file) {
		t.Errorf("Open(0644 file) = %v; want a refusal", err)
	}
}

// faultFS fails one step of the write path.
type faultFS struct {
	osFS
	fail string
}

var errInjected = errors.New("injected failure")

func (f *faultFS) ReadFile(name string) ([]byte, error) {
	if f.fail == "read" {
		return nil, errInjected
	}
	return f.osFS.ReadFile(name)
}

func (f *faultFS) Lock(ctx context.Context, path string) (func(), error) {
	if f.fail == "lock" {
		return nil, errInjected
	}
	return f.osFS.Lock(ctx, path)
}

func (f *faultFS) CreateTemp(dir, pattern string) (tempFile, error) {
	if f.fail == "create" {
		return nil, errInjected
	}
	tf, err := f.osFS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultFile{tempFile: tf, fail: f.fail}, nil
}

func (f *faultFS) Rename(oldpath, newpath string) error {
	if f.fail == "rename" {
		return errInjected
	}
	return f.osFS.Rename(oldpath, newpath)
}

func (f *faultFS) SyncDir(dir string) error {
	if f.fail == "syncdir" {
		return errInjected
	}
	return f.osFS.SyncDir(dir)
}

type faultFile struct {
	tempFile
	fail string
}

func (f *faultFile) Write(p []byte) (int, error) {
	if f.fail == "write" {
		n, _ := f.tempFile.Write(p[:len(p)/2]) // a torn write
		return n, errInjected
	}
	return f.tempFile.Write(p)
}

func (f *faultFile) Sync() error {
	if f.fail == "sync" {
		return errInjected
	}
	return f.tempFile.Sync()
}

func (f *faultFile) Close() error {
	err := f.tempFile.Close()
	if f.fail == "close" {
		return errInjected
	}
	return err
}

// dirNames lists dir.
func dirNames(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestFileStoreWriteFailures(t *testing.T) {
	p := testPolicy(keys.ES256, keys.EdDSA)
	for _, step := range []string{"lock", "read", "create", "write", "sync", "close", "rename", "syncdir"} {
		t.Run(step, func(t *testing.T) {
			ctx := testCtx(t)
			dir := keyDir(t)
			good := newTestFileStore(t, dir)
			prev, err := keys.Update(ctx, good, func(s *keys.Set) error { return s.Ensure(t0, p) })
			if err != nil {
				t.Fatal(err)
			}

			bad := newStore(dir, &faultFS{fail: step})
			s := prev.Clone()
			if err := s.Rotate(t0.Add(2*time.Hour), p, keys.ES256, false); err != nil {
				t.Fatal(err)
			}
			saveErr := bad.Save(ctx, s)
			if !errors.Is(saveErr, errInjected) {
				t.Fatalf("Save with a failing %s = %v; want the injected error", step, saveErr)
			}
			if !strings.HasPrefix(saveErr.Error(), "filestore: ") {
				t.Errorf("error %q lacks the filestore: prefix", saveErr)
			}

			got, err := good.Load(ctx)
			if err != nil {
				t.Fatalf("Load after a failed %s: %v", step, err)
			}
			if step == "syncdir" {
				// The rename committed the new set; only its durability
				// is in doubt, and Save said so.
				if got.Version != prev.Version+1 {
					t.Errorf("after a failed directory sync, version %d; want the committed %d", got.Version, prev.Version+1)
				}
				if !strings.Contains(saveErr.Error(), "may not survive a crash") {
					t.Errorf("Save error %q does not say the change is in place but not durable", saveErr)
				}
			} else {
				if a, b := marshal(t, got), marshal(t, prev); !bytes.Equal(a, b) {
					t.Errorf("after a failed %s the stored set changed (version %d → %d)", step, prev.Version, got.Version)
				}
				if s.Version != prev.Version {
					t.Errorf("failed Save changed set.Version to %d", s.Version)
				}
			}
			if names := dirNames(t, dir); !slices.Equal(names, []string{setFileName, lockFileName}) {
				t.Errorf("after a failed %s the directory holds %v; want only the key and lock files", step, names)
			}
			// The store still works.
			if _, err := keys.Update(ctx, good, func(s *keys.Set) error { return s.Rotate(t0.Add(3*time.Hour), p, keys.EdDSA, false) }); err != nil {
				t.Errorf("keys.Update after a failed %s: %v", step, err)
			}
		})
	}
}

func TestFileStoreCleansLitter(t *testing.T) {
	dir := keyDir(t)
	st := newTestFileStore(t, dir)
	ctx := testCtx(t)
	if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) }); err != nil {
		t.Fatal(err)
	}
	// A writer that crashed between creating and renaming its file.
	litter := filepath.Join(dir, tempPrefix+"12345")
	if err := os.WriteFile(litter, []byte(`{"format":1,"vers`), 0o600); err != nil {
		t.Fatal(err)
	}
	newTestFileStore(t, dir)
	if _, err := os.Stat(litter); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NewFileStore left a crashed writer's temporary file")
	}
	// And Save cleans up too, e.g. if the lock was busy at open.
	os.WriteFile(litter, nil, 0o600)
	if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Rotate(t0.Add(time.Hour), testPolicy(keys.ES256), keys.ES256, true) }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(litter); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Save left a crashed writer's temporary file")
	}
}

func TestFileStoreCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"empty":     "",
		"truncated": `{"format":1,"version":3,"keys":[{"kid":"x"`,
		"garbage":   "\x00\x01binary",
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := keyDir(t)
			st := newTestFileStore(t, dir)
			if err := os.WriteFile(st.Path(), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := st.Load(ctx)
			if !errors.Is(err, keys.ErrCorrupt) || !strings.Contains(err.Error(), st.Path()) {
				t.Fatalf("Load of a corrupt file = %v; want keys.ErrCorrupt naming %s", err, st.Path())
			}
			// Nothing may replace the corrupt file with a fresh set: that
			// would silently lose the keys.
			if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) }); err == nil {
				t.Error("keys.Update over a corrupt file succeeded")
			}
			if err := st.Save(ctx, ensured(t, testPolicy(keys.ES256))); err == nil {
				t.Error("Save over a corrupt file succeeded")
			}
			if _, err := keys.NewManager(ctx, st, testPolicy(keys.ES256), nil); err == nil || !strings.Contains(err.Error(), st.Path()) {
				t.Errorf("keys.NewManager over a corrupt file = %v; want an error naming the file", err)
			}
			if got, _ := os.ReadFile(st.Path()); string(got) != content {
				t.Error("the corrupt file was modified")
			}
		})
	}
}

func TestFileStoreLockWaitIsBounded(t *testing.T) {
	dir := keyDir(t)
	st := newTestFileStore(t, dir)
	// Another process holds the lock (an open file description of our own
	// conflicts just the same).
	unlock, err := lockFile(context.Background(), filepath.Join(dir, lockFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = st.Save(ctx, ensured(t, testPolicy(keys.ES256)))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "holds the lock") {
		t.Errorf("Save while locked = %v; want a lock wait error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Save waited %v past its 150ms deadline", d)
	}

	// Without a deadline, the store's own bound applies.
	st.lockWait = 100 * time.Millisecond
	start = time.Now()
	if err := st.Save(context.Background(), ensured(t, testPolicy(keys.ES256))); err == nil {
		t.Error("Save succeeded while another holder had the lock")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Save without deadline waited %v; want about lockWait", d)
	}

	unlock()
	if err := st.Save(testCtx(t), ensured(t, testPolicy(keys.ES256))); err != nil {
		t.Errorf("Save after the lock was released: %v", err)
	}
}

// Environment of TestHelperProcess.
const (
	helperDirEnv     = "TSIDP_KEYS_HELPER_DIR"
	helperBarrierEnv = "TSIDP_KEYS_HELPER_BARRIER"
	helperCountEnv   = "TSIDP_KEYS_HELPER_ROTATIONS"
)

// TestHelperProcess is not a test: TestFileStoreMultiProcess runs the test
// binary again as several child processes that execute it.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		return
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "helper: "+format+"\n", args...)
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Getenv(helperCountEnv))
	if err != nil {
		fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := Open(dir)
	if err != nil {
		fail("%v", err)
	}
	// Start together, so the processes really contend.
	for {
		if _, err := os.Stat(os.Getenv(helperBarrierEnv)); err == nil {
			break
		}
		if ctx.Err() != nil {
			fail("barrier not released")
		}
		time.Sleep(time.Millisecond)
	}
	cs := &conflictCounter{Store: st}
	p := testPolicy(keys.ES256)
	for i := range n {
		if _, err := keys.Update(ctx, cs, func(s *keys.Set) error { return s.Rotate(time.Now(), p, keys.ES256, true) }); err != nil {
			fail("rotation %d: %v", i, err)
		}
	}
	fmt.Printf("conflicts=%d\n", cs.conflicts.Load())
	os.Exit(0)
}

// conflictCounter counts the conflicts a Store's Saves report.
type conflictCounter struct {
	keys.Store
	conflicts atomic.Int64
}

func (c *conflictCounter) Save(ctx context.Context, s *keys.Set) error {
	err := c.Store.Save(ctx, s)
	if errors.Is(err, keys.ErrConflict) {
		c.conflicts.Add(1)
	}
	return err
}

// TestFileStoreMultiProcess has several processes rotate the same key set
// at once; compare-and-swap under the file lock must lose no rotation.
func TestFileStoreMultiProcess(t *testing.T) {
	const procs, each = 4, 15
	ctx := testCtx(t)
	dir := keyDir(t)
	st := newTestFileStore(t, dir)
	init, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) })
	if err != nil {
		t.Fatal(err)
	}
	barrier := filepath.Join(t.TempDir(), "go")
	type child struct {
		cmd            *exec.Cmd
		stdout, stderr bytes.Buffer
	}
	var children []*child
	for range procs {
		c := &child{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")}
		c.cmd.Env = append(os.Environ(),
			helperDirEnv+"="+dir, helperBarrierEnv+"="+barrier, helperCountEnv+"="+strconv.Itoa(each))
		c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
	}
	if err := os.WriteFile(barrier, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var conflicts int
	for i, c := range children {
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v\nstdout: %s\nstderr: %s", i, err, c.stdout.String(), c.stderr.String())
			continue
		}
		sc := bufio.NewScanner(&c.stdout)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "conflicts="); ok {
				n, _ := strconv.Atoi(v)
				conflicts += n
			}
		}
	}
	got, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := init.Version + procs*each; got.Version != want {
		t.Errorf("version after %d processes × %d rotations = %d; want %d", procs, each, got.Version, want)
	}
	if n := count(got, keys.ES256, keys.StateRetired); n != procs*each {
		t.Errorf("%d retired keys; want %d: rotations were lost", n, procs*each)
	}
	if err := got.Check(); err != nil {
		t.Error(err)
	}
	t.Logf("%d processes × %d rotations: %d compare-and-swap conflicts retried", procs, each, conflicts)
}

func TestFileStoreWatch(t *testing.T) {
	dir := keyDir(t)
	st := newTestFileStore(t, dir)
	st.pollInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	ch := st.Watch(ctx)
	// A write by another process (another store on the same directory).
	other := newTestFileStore(t, dir)
	if _, err := keys.Update(ctx, other, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signal within 5s of another writer's save")
	}
	// Close stops the watcher.
	st.Close()
	select {
	case _, ok := <-ch:
		if ok {
			// A pending signal may precede the close.
			if _, ok := <-ch; ok {
				t.Error("watch channel still open after Close")
			}
		}
	case <-time.After(5 * time.Second):
		t.Error("watch channel not closed after Close")
	}
}

// TestConfigOpen: the file store's configuration opens it, creating the
// directory; with MustExist a directory without a key set is refused
// (keys.ErrNoKeySet, naming the file) and nothing is created.
func TestConfigOpen(t *testing.T) {
	ctx := testCtx(t)
	dir := keyDir(t)
	c := Config{Dir: dir}
	_, err := c.Open(ctx, keys.OpenOptions{MustExist: true})
	if !errors.Is(err, keys.ErrNoKeySet) || !strings.Contains(err.Error(), "no key set at "+filepath.Join(dir, setFileName)) {
		t.Errorf("Open(MustExist) of a new directory = %v; want ErrNoKeySet naming the file", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(MustExist) created %s (%v)", dir, err)
	}
	st, err := c.Open(ctx, keys.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := perm(t, dir); got != 0o700 {
		t.Errorf("Open made %s with mode %04o", dir, got)
	}
	if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, testPolicy(keys.ES256)) }); err != nil {
		t.Fatal(err)
	}
	again, err := c.Open(ctx, keys.OpenOptions{MustExist: true})
	if err != nil {
		t.Fatalf("Open(MustExist) with a key set: %v", err)
	}
	again.Close()
}
