//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package filestore

import (
	"context"
	"fmt"
	"io/fs"
	"runtime"
)

// The file store needs flock(2) to serialize writers across processes;
// elsewhere it refuses to write rather than risk lost updates.
func lockFile(ctx context.Context, path string) (func(), error) {
	return nil, fmt.Errorf("the file store cannot lock files on %s", runtime.GOOS)
}

func checkPrivateDir(dir string) error                   { return nil }
func checkPrivateFile(fi fs.FileInfo, path string) error { return nil }

type fileStamp struct{ size, mtime int64 }

func stampOf(fi fs.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}
