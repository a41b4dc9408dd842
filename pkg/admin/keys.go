package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// Keys is the key administration `tsidp keys` works through: a running
// daemon's, over its admin socket, or the store's when no daemon runs.
type Keys struct {
	keys.Administrator
	// Daemon reports whether it goes through a daemon, whose JWKS each
	// change reaches at once. Otherwise it works on the store directly,
	// and a tsidp running on the store (one this command could not reach
	// over the socket) picks changes up when it next reads the store.
	Daemon bool
	// Socket is the admin socket's path.
	Socket string

	closeStore func() error
}

// probeTimeout bounds asking the admin socket whether a daemon serves it.
const probeTimeout = 5 * time.Second

// OpenKeys returns the key administration for the daemon serving the admin
// socket at socket if one answers there; else, when no daemon runs
// (ErrNotRunning), a keys.Offline on the store openStore opens, under
// policy p. Any other answer at the socket (a daemon that fails, a
// listener of another user) is an error rather than a reason to work on
// the store behind a daemon's back. Close the result when done.
func OpenKeys(ctx context.Context, socket string, p keys.Policy, openStore func(context.Context) (keys.Store, error)) (*Keys, error) {
	c := NewClient(socket)
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := c.Status(pctx)
	switch {
	case err == nil:
		return &Keys{Administrator: c, Daemon: true, Socket: socket}, nil
	case errors.Is(err, ErrUntrustedServer):
		return nil, err
	case !errors.Is(err, ErrNotRunning):
		return nil, fmt.Errorf("admin: asking the daemon on %s: %w", socket, err)
	}
	st, err := openStore(ctx)
	if err != nil {
		return nil, err
	}
	return &Keys{Administrator: keys.NewOffline(st, p, nil), Socket: socket, closeStore: st.Close}, nil
}

// Close closes the store, if the keys were administered there.
func (k *Keys) Close() error {
	if k.closeStore == nil {
		return nil
	}
	return k.closeStore()
}
