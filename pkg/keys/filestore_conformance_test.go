package keys_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/keystest"
)

func TestFileStoreConformance(t *testing.T) {
	keystest.RunStoreTests(t, func(t *testing.T) keys.Store {
		st, err := keys.NewFileStore(filepath.Join(t.TempDir(), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		keys.SetPollInterval(st, 10*time.Millisecond)
		return st
	})
}
