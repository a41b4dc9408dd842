package filestore

import (
	"context"
	"os"
)

// fileSystem is what the file store does to the disk, one method per step
// of a write. Tests substitute it to fail each step and check that the
// previous set survives.
type fileSystem interface {
	ReadFile(name string) ([]byte, error)
	CreateTemp(dir, pattern string) (tempFile, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
	// Lock takes an exclusive lock shared with other processes, waiting at
	// most until ctx is done. It tries at least once even if ctx is done.
	// Errors carry no "filestore:" prefix; the caller adds it.
	Lock(ctx context.Context, path string) (unlock func(), err error)
}

// tempFile is the part of *os.File the write path uses.
type tempFile interface {
	Name() string
	Write(p []byte) (int, error)
	Sync() error
	Close() error
}

// osFS is the real fileSystem.
type osFS struct{}

func (osFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// CreateTemp creates the file with mode 0600, as os.CreateTemp does.
func (osFS) CreateTemp(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) }

func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error             { return os.Remove(name) }

// SyncDir makes a rename in dir durable.
func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (osFS) Lock(ctx context.Context, path string) (func(), error) { return lockFile(ctx, path) }
