//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package filestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"syscall"
	"time"
)

// lockFile takes an exclusive flock(2) on path, creating it if needed. The
// lock belongs to the open file description, so it also excludes other
// goroutines of this process that open the file separately, and the kernel
// drops it if the process dies. flock has no timeout, so it is polled
// without blocking until ctx is done.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("flock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another process is writing keys and holds the lock: %w", ctx.Err())
		case <-time.After(delay/2 + rand.N(delay)):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// checkPrivateDir refuses a key directory that others can enter or that
// belongs to another user: either could read the private keys.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("filestore: %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("filestore: key directory %s has mode %04o, which lets group or others in; it holds private keys, so only its owner may have access (chmod 700 %s)", dir, perm, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("filestore: key directory %s is owned by uid %d, but this process runs as uid %d; its owner could read the private keys", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// checkPrivateFile refuses a key file that group or others can access.
func checkPrivateFile(fi fs.FileInfo, path string) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("filestore: %s has mode %04o; it holds private keys, so only its owner may have access (chmod 600 %s)", path, perm, path)
	}
	return nil
}

// fileStamp identifies a version of a file cheaply: every save renames a
// new inode into place.
type fileStamp struct {
	ino, size, mtime int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	s := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = int64(st.Ino)
	}
	return s
}
