package etcdstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// Settings is the etcd store as tsidp's configuration describes it
// (keys.store etcd://… and keys.etcd): where etcd is, and the files that
// hold the key-encryption key and the TLS material. It opens the store
// itself, reading those files then (keys.StoreConfig).
type Settings struct {
	Endpoints   []string
	Prefix      string
	KEKFile     string
	TLS         TLSFiles
	DialTimeout time.Duration
	ElectionTTL time.Duration
}

var _ keys.StoreConfig = Settings{}

// Open implements keys.StoreConfig: it loads the KEK and the TLS files and
// opens the store (see Open), failing within DialTimeout if etcd does not
// answer. With o.MustExist it refuses a prefix that holds no key set.
func (c Settings) Open(ctx context.Context, o keys.OpenOptions) (keys.Store, error) {
	sl, err := LoadKEK(c.KEKFile)
	if err != nil {
		return nil, err
	}
	tc, err := c.TLS.Config()
	if err != nil {
		return nil, err
	}
	st, err := Open(ctx, Config{
		Endpoints:   c.Endpoints,
		Prefix:      c.Prefix,
		TLS:         tc,
		Sealer:      sl,
		DialTimeout: c.DialTimeout,
		ElectionTTL: c.ElectionTTL,
		Logf:        o.Logf,
	})
	if err != nil {
		return nil, err
	}
	if o.MustExist {
		set, err := st.Load(ctx)
		if err == nil && len(set.Keys) == 0 {
			err = fmt.Errorf("etcdstore: %w in etcd at %s under prefix %q", keys.ErrNoKeySet, strings.Join(c.Endpoints, ","), st.prefix)
		}
		if err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, nil
}
