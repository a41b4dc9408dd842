package filestore

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/keystest"
)

func TestFileStoreConformance(t *testing.T) {
	keystest.RunStoreTests(t, func(t *testing.T) keys.Store {
		st, err := Open(filepath.Join(t.TempDir(), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		st.pollInterval = 10 * time.Millisecond
		return st
	})
}
