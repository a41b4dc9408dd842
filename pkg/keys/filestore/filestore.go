// Package filestore is the embedded keys.Store: the whole key set as one
// JSON file under tsidp's state directory, for a single tsidp (with the CLI
// beside it). Package etcdstore is the replicated one.
package filestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tsidp/tsidp/internal/crashtest"
	"github.com/tsidp/tsidp/pkg/keys"
)

// File names in a Store's directory.
const (
	setFileName  = "keyset.json"
	lockFileName = "keyset.lock"
	tempPrefix   = "keyset.json.tmp-"
)

// Store is the embedded keys.Store: one JSON document (see keys.MarshalSet),
// dir/keyset.json, holding every key including private keys as JWKs.
//
// The directory is created 0700 and the file written 0600. An existing
// directory that group or others can access, or that another user owns, is
// refused rather than tightened: its keys may already have been read, and
// an operator should decide what that means (rotate, revoke) rather than
// have it silently fixed.
//
// Writes are atomic (temporary file in the same directory, write, fsync,
// rename, fsync the directory), so Load sees the old or the new set, never
// a mix. Save holds an exclusive flock on dir/keyset.lock for its
// read-compare-write, so writers in any number of processes serialize, and
// compares versions so none loses another's update. Temporary files left by
// a crash are removed by the next writer.
//
// Store implements keys.Watcher by polling the file's metadata.
type Store struct {
	dir, path, lockPath string
	fs                  fileSystem
	// sem serializes this process's writers before they contend for the
	// flock, which can only be polled. Unlike a sync.Mutex, waiting on it
	// honors ctx.
	sem          chan struct{}
	lockWait     time.Duration // upper bound on waiting for the lock
	pollInterval time.Duration // Watch

	closed    atomic.Bool
	done      chan struct{} // closed by Close; stops watchers
	closeOnce sync.Once
}

// Default bounds of a Store.
const (
	defaultLockWait     = 30 * time.Second
	defaultPollInterval = time.Second
)

var (
	_ keys.Store   = (*Store)(nil)
	_ keys.Watcher = (*Store)(nil)
)

// Open opens the key store in dir, creating dir (mode 0700) if needed. It
// refuses a directory others can access or another user owns, and a key
// file with group or other permissions.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("filestore: the file store needs a directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("filestore: creating key directory: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	s := newStore(dir, osFS{})
	fi, err := os.Lstat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("filestore: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("filestore: %s is not a regular file", s.path)
	default:
		if err := checkPrivateFile(fi, s.path); err != nil {
			return nil, err
		}
	}
	// Clean up after a crashed writer, unless someone is writing right
	// now (then their temporary file is not litter); the next Save cleans
	// up in any case.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if unlock, err := s.lock(ctx); err == nil {
		s.removeTemps()
		unlock()
	}
	return s, nil
}

func newStore(dir string, fsys fileSystem) *Store {
	return &Store{
		dir:          dir,
		path:         filepath.Join(dir, setFileName),
		lockPath:     filepath.Join(dir, lockFileName),
		fs:           fsys,
		sem:          make(chan struct{}, 1),
		lockWait:     defaultLockWait,
		pollInterval: defaultPollInterval,
		done:         make(chan struct{}),
	}
}

// Path returns the name of the key set file.
func (s *Store) Path() string { return s.path }

// Load implements Store. A missing file is an empty set at version 0; an
// unreadable or corrupt file is an error naming it, never an empty set,
// which would let the next write replace the keys.
func (s *Store) Load(ctx context.Context) (*keys.Set, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("filestore: file store %s: %w", s.dir, keys.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("filestore: %w", err)
	}
	data, err := s.fs.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &keys.Set{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: reading %s: %w", s.path, err)
	}
	set, err := keys.UnmarshalSet(data)
	if err != nil {
		return nil, fmt.Errorf("filestore: %s: %w", s.path, err)
	}
	return set, nil
}

// Save implements keys.Store.
func (s *Store) Save(ctx context.Context, set *keys.Set) error {
	if s.closed.Load() {
		return fmt.Errorf("filestore: file store %s: %w", s.dir, keys.ErrClosed)
	}
	// Encode before taking the lock: other writers need not wait for it.
	next := *set
	next.Version++
	data, err := keys.MarshalSet(&next)
	if err != nil {
		return err
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := s.storedVersion()
	if err != nil {
		return err
	}
	if cur != set.Version {
		return fmt.Errorf("filestore: %s is at version %d, not %d: %w", s.path, cur, set.Version, keys.ErrConflict)
	}
	s.removeTemps()
	if err := s.write(data); err != nil {
		return err
	}
	set.Version = next.Version
	return nil
}

// lock takes the in-process semaphore and the cross-process file lock,
// waiting no longer than ctx allows and never longer than s.lockWait.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, s.lockWait)
	defer cancel()
	select {
	case s.sem <- struct{}{}:
	default:
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("filestore: locking %s: another writer in this process holds the lock: %w", s.lockPath, ctx.Err())
		}
	}
	funlock, err := s.fs.Lock(ctx, s.lockPath)
	if err != nil {
		<-s.sem
		return nil, fmt.Errorf("filestore: locking %s: %w", s.lockPath, err)
	}
	return func() {
		funlock()
		<-s.sem
	}, nil
}

// storedVersion returns the version of the stored set, 0 if there is none.
// It decodes only the document's head: the full check happens on Load.
func (s *Store) storedVersion() (int64, error) {
	data, err := s.fs.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("filestore: reading %s: %w", s.path, err)
	}
	var head struct {
		Format  int   `json:"format"`
		Version int64 `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return 0, fmt.Errorf("filestore: %s: %w: %v", s.path, keys.ErrCorrupt, err)
	}
	if head.Format != keys.FormatVersion {
		return 0, fmt.Errorf("filestore: %s has key set format %d; this tsidp writes only format %d and will not overwrite it", s.path, head.Format, keys.FormatVersion)
	}
	return head.Version, nil
}

// write replaces the key set file with data atomically and durably. On
// any failure before the rename, the old file is untouched and the
// temporary file removed. The rename is the commit point: if syncing the
// directory fails after it, the new set is in place (and will be loaded)
// but may not survive a crash, and write says so.
func (s *Store) write(data []byte) (err error) {
	f, err := s.fs.CreateTemp(s.dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("filestore: creating temporary file in %s: %w", s.dir, err)
	}
	tmp, open := f.Name(), true
	defer func() {
		if err != nil {
			if open {
				f.Close()
			}
			s.fs.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("filestore: writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("filestore: syncing %s: %w", tmp, err)
	}
	open = false
	if err := f.Close(); err != nil {
		return fmt.Errorf("filestore: closing %s: %w", tmp, err)
	}
	crashtest.Point(crashtest.FileTempSynced)
	if err := s.fs.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("filestore: renaming %s to %s: %w", tmp, s.path, err)
	}
	crashtest.Point(crashtest.FileRenamed)
	if err := s.fs.SyncDir(s.dir); err != nil {
		return fmt.Errorf("filestore: saved %s, but syncing directory %s failed, so the change may not survive a crash: %w", s.path, s.dir, err)
	}
	return nil
}

// removeTemps deletes temporary files left by writers that crashed. Call
// it only while holding the lock, when no other write is in progress.
func (s *Store) removeTemps() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			s.fs.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// Watch implements keys.Watcher. It polls the key file's metadata about once a
// second, which costs one stat(2) and notices every rename-into-place.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	// The first stamp is taken before Watch returns: taken in the
	// goroutine, a Save right after Watch could land first and never be
	// signalled (TestFileStoreConformance/Watch failed so on a loaded
	// machine).
	last := s.stamp()
	go func() {
		defer close(ch)
		t := time.NewTicker(s.pollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			case <-t.C:
			}
			if cur := s.stamp(); cur != last {
				last = cur
				select {
				case ch <- struct{}{}:
				default: // a signal is pending; the reader will reload anyway
				}
			}
		}
	}()
	return ch
}

func (s *Store) stamp() fileStamp {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fileStamp{}
	}
	return stampOf(fi)
}

// Close implements keys.Store. It stops watchers; later Loads and Saves fail
// with ErrClosed. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
	})
	return nil
}

// Config is the file store's configuration: the directory it keeps the
// key set in (tsidp uses <state_dir>/keys). It opens the store itself.
type Config struct {
	Dir string
}

var _ keys.StoreConfig = Config{}

// Open implements keys.StoreConfig. With o.MustExist it refuses a
// directory without a key set before creating anything.
func (c Config) Open(_ context.Context, o keys.OpenOptions) (keys.Store, error) {
	if o.MustExist {
		path := filepath.Join(c.Dir, setFileName)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("filestore: %w at %s", keys.ErrNoKeySet, path)
		}
	}
	return Open(c.Dir)
}
