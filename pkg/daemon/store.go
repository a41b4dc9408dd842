package daemon

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/keys"
)

// OpenStore opens the key store the configuration names.
func OpenStore(ctx context.Context, cfg *config.Config) (keys.Store, error) {
	switch {
	case cfg.Keys.Store == "file":
		st, err := keys.NewFileStore(filepath.Join(cfg.StateDir, "keys"))
		if err != nil {
			return nil, fmt.Errorf("tsidp: key store: %w", err)
		}
		return st, nil
	default:
		return nil, fmt.Errorf("tsidp: key store %q is not supported", cfg.Keys.Store)
	}
}
