package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tsidp/tsidp/pkg/config"
)

// TestStartRefusesUnsafeDirs: tsidp does not start on a state directory,
// or with an admin socket directory, that group or others can write to or
// that another user owns (whoever can write there could replace admin.sock
// and be sent private keys by `tsidp keys import`); the one-line error
// names the fix.
func TestStartRefusesUnsafeDirs(t *testing.T) {
	mkdir := func(mode os.FileMode) string {
		d := filepath.Join(t.TempDir(), "d")
		os.Mkdir(d, mode)
		os.Chmod(d, mode)
		return d
	}
	open := mkdir(0o777)
	safe := mkdir(0o755)
	openSock := mkdir(0o777)
	// A directory another user owns: made with chown as root, else "/",
	// which root owns.
	theirs, theirUID := "/", "0"
	if os.Getuid() == 0 {
		theirs, theirUID = mkdir(0o700), "65534"
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name           string
		stateDir, sock string
		want           string
	}{
		{"state dir 0777", open, "", "state dir " + open + " has mode 0777: group or others can write to it and could replace the admin socket and what else tsidp keeps there; fix: chmod go-w " + open},
		{"state dir of another user", theirs, "", "state dir " + theirs + " is owned by uid " + theirUID + ", but tsidp runs as uid "},
		{"socket dir 0777", safe, filepath.Join(openSock, "admin.sock"), "admin socket directory " + openSock + " has mode 0777"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{StateDir: tc.stateDir, Issuer: "http://127.0.0.1", Listen: []string{"127.0.0.1:0"}}
			cfg.Admin.Socket = tc.sock
			cfg.Tailscale.Socket = filepath.Join(t.TempDir(), "no-tailscaled.sock")
			cfg.Keys.Algorithms = []string{"ES256"}
			cfg.Provision()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			d, err := Start(context.Background(), cfg, Options{Logf: t.Logf})
			if err == nil {
				d.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "fix: ch") || strings.Contains(err.Error(), "\n") {
				t.Errorf("Start: %v; want one line containing %q and the fix", err, tc.want)
			}
			if _, err := os.Lstat(filepath.Join(tc.stateDir, "keys")); tc.sock == "" && !os.IsNotExist(err) {
				t.Errorf("Start made the key store before refusing the state dir (%v)", err)
			}
		})
	}
}
