// Package admin is tsidp's operator API: a small JSON API on a unix socket
// (default <state-dir>/admin.sock) that the CLI uses to list, rotate and
// revoke keys in a running daemon, and to read its status.
//
// Access control is the socket itself: the file is 0600 in a 0700 directory
// that only the daemon's user can write to (see CheckDir), and every
// connection's peer credentials are checked (owner or root only). The client
// checks the server the same way: it talks only to a process running as its
// own user or root, so a listener someone else put at the socket's path is
// never sent a request, let alone a private key.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"
	"golang.org/x/sys/unix"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/internal/httpsrv"
	"github.com/tsidp/tsidp/pkg/keys"
)

// Status is the daemon's state as GET /v1/status reports it.
type Status struct {
	Version  string          `json:"version"`
	Issuer   string          `json:"issuer"`
	Backend  string          `json:"backend"`
	Identity string          `json:"identity"` // "ready" or why not
	Keys     keys.Status     `json:"keys"`
	Plugins  json.RawMessage `json:"plugins,omitempty"`
	Store    string          `json:"store,omitempty"` // "ok" or why not
}

// Config wires the admin handler.
type Config struct {
	// Keys administers the daemon's keys: its *keys.Manager.
	Keys    keys.Administrator
	Version string
	Issuer  string
	Backend string
	// IdentityReady reports the identity backend's readiness.
	IdentityReady func(context.Context) error
	// Plugins returns plugin health as JSON-encodable data, or nil.
	Plugins func() any
	// StoreHealth reports the key store's health, or nil.
	StoreHealth func(context.Context) error
	Logf        logger.Logf
}

// KeysResponse is the answer of the key endpoints: the keys after the
// change, and for GET /v1/keys the status of the set.
type KeysResponse struct {
	Keys   []keys.KeyInfo `json:"keys"`
	Status *keys.Status   `json:"status,omitempty"`
}

// RotateRequest asks for a rotation.
type RotateRequest struct {
	Algorithms []keys.Algorithm `json:"algorithms,omitempty"`
	Force      bool             `json:"force,omitempty"`
}

// ImportRequest asks to import a private key. It travels only over the
// admin socket (0600, peer uid checked), never over the network.
type ImportRequest struct {
	Key       string         `json:"key"` // PEM or JWK
	Algorithm keys.Algorithm `json:"algorithm"`
	Activate  bool           `json:"activate,omitempty"`
}

// RevokeRequest asks for a revocation.
type RevokeRequest struct {
	KID string `json:"kid"`
}

// Handler returns the admin API's HTTP handler: one route per
// keys.Administrator operation, and the daemon's status.
func Handler(cfg Config) http.Handler {
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	a := &api{cfg}
	r := chi.NewRouter()
	r.Get("/v1/status", a.status)
	r.Get("/v1/keys", a.list)
	r.Post("/v1/keys/init", a.init)
	r.Post("/v1/keys/rotate", a.rotate)
	r.Post("/v1/keys/revoke", a.revoke)
	r.Post("/v1/keys/import", a.importKey)
	r.Get("/v1/jwks", a.jwks)
	return r
}

// Timeouts of the admin server. Writes get long: a rotation generates
// RSA keys before it answers.
const (
	readTimeout  = 30 * time.Second
	writeTimeout = 90 * time.Second
)

// NewServer returns the HTTP server of the admin API, which the daemon
// serves on the listener Listen returns (and so do the tests).
func NewServer(cfg Config) *http.Server {
	return httpsrv.New(Handler(cfg), httpsrv.Options{ReadTimeout: readTimeout, WriteTimeout: writeTimeout})
}

// api serves the admin routes.
type api struct{ cfg Config }

// status answers GET /v1/status: version, issuer, and the health of the
// identity backend, the keys, the plugins and the key store.
func (a *api) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	_, ks, err := a.cfg.Keys.List(ctx)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	st := Status{Version: a.cfg.Version, Issuer: a.cfg.Issuer, Backend: a.cfg.Backend, Identity: "ready", Keys: ks}
	if a.cfg.IdentityReady != nil {
		if err := a.cfg.IdentityReady(ctx); err != nil {
			st.Identity = err.Error()
		}
	}
	if a.cfg.StoreHealth != nil {
		st.Store = "ok"
		if err := a.cfg.StoreHealth(ctx); err != nil {
			st.Store = err.Error()
		}
	}
	if a.cfg.Plugins != nil {
		if p := a.cfg.Plugins(); p != nil {
			st.Plugins, _ = json.Marshal(p)
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// list answers GET /v1/keys: every key, and the status of the set.
func (a *api) list(w http.ResponseWriter, r *http.Request) {
	infos, st, err := a.cfg.Keys.List(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, KeysResponse{Keys: infos, Status: &st})
}

// init answers POST /v1/keys/init (an empty JSON object).
func (a *api) init(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if !readJSON(w, r, &req) {
		return
	}
	a.changed(w, "keys initialized", func() ([]keys.KeyInfo, error) { return a.cfg.Keys.Init(r.Context()) })
}

// rotate answers POST /v1/keys/rotate (RotateRequest).
func (a *api) rotate(w http.ResponseWriter, r *http.Request) {
	var req RotateRequest
	if !readJSON(w, r, &req) {
		return
	}
	a.changed(w, fmt.Sprintf("keys rotated (algorithms %v, force %v)", req.Algorithms, req.Force), func() ([]keys.KeyInfo, error) {
		return a.cfg.Keys.Rotate(r.Context(), req.Algorithms, req.Force)
	})
}

// revoke answers POST /v1/keys/revoke (RevokeRequest).
func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if !readJSON(w, r, &req) {
		return
	}
	a.changed(w, "key "+req.KID+" revoked", func() ([]keys.KeyInfo, error) { return a.cfg.Keys.Revoke(r.Context(), req.KID) })
}

// changed runs a change, logs what (never key material) once it
// succeeded, and answers with the keys after it.
func (a *api) changed(w http.ResponseWriter, what string, change func() ([]keys.KeyInfo, error)) {
	infos, err := change()
	if err != nil {
		writeErr(w, http.StatusConflict, err)
		return
	}
	a.cfg.Logf("admin: %s", what)
	writeJSON(w, http.StatusOK, KeysResponse{Keys: infos})
}

// importKey answers POST /v1/keys/import (ImportRequest) with the imported
// key's listing entry.
func (a *api) importKey(w http.ResponseWriter, r *http.Request) {
	var req ImportRequest
	if !readJSON(w, r, &req) {
		return
	}
	ki, err := a.cfg.Keys.Import(r.Context(), []byte(req.Key), req.Algorithm, req.Activate)
	if err != nil {
		writeErr(w, http.StatusConflict, err)
		return
	}
	a.cfg.Logf("admin: imported %s key %s as %s", ki.Algorithm, ki.ID, ki.State)
	writeJSON(w, http.StatusOK, ki)
}

// jwks answers GET /v1/jwks with the public JWKS.
func (a *api) jwks(w http.ResponseWriter, r *http.Request) {
	body, err := a.cfg.Keys.ExportJWKS(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("admin: bad request: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

type errorBody struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, errorBody{Error: err.Error()})
}

// CheckDir refuses a directory (what names it in the error) that group or
// others can write to, or that another user owns: either could replace the
// admin socket in it, or anything else tsidp keeps there, with their own.
// The error is one line that names the fix.
func CheckDir(what, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("admin: %s: %w", what, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("admin: %s %s is not a directory", what, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if me := os.Geteuid(); int(st.Uid) != me {
			return fmt.Errorf("admin: %s %s is owned by uid %d, but tsidp runs as uid %d: its owner could replace the admin socket and what else tsidp keeps there; fix: chown %d %s", what, dir, st.Uid, me, me, dir)
		}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("admin: %s %s has mode %04o: group or others can write to it and could replace the admin socket and what else tsidp keeps there; fix: chmod go-w %s", what, dir, perm, dir)
	}
	return nil
}

// Listen opens the admin socket at path: mode 0600, parent directory 0700
// (an existing parent must pass CheckDir).
// It first takes an exclusive lock on path+".lock", held until the listener
// is closed: a second daemon on the same state directory fails here, even if
// the first one's socket is momentarily missing or too busy to answer, and a
// socket left by a crashed daemon (which held no lock any more) is replaced.
// Close removes the socket before it releases the lock, so that a daemon
// stopping never removes its successor's socket.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := CheckDir("admin socket directory", filepath.Dir(path)); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("admin: another tsidp is serving on %s (it holds %s.lock)", path, path)
		}
		return nil, fmt.Errorf("admin: locking %s.lock: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			lock.Close()
			return nil, fmt.Errorf("admin: %s exists and is not a socket", path)
		}
		os.Remove(path) // stale: its daemon no longer holds the lock
	}
	// Between Listen and Chmod the socket has the umask's mode; that window
	// is harmless because every accepted connection's peer uid is checked.
	// (Changing the process umask instead would race other file creation.)
	ln, err := net.Listen("unix", path)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	return &peerCheckListener{UnixListener: ln.(*net.UnixListener), uid: os.Getuid(), lock: lock}, nil
}

// peerCheckListener drops connections whose peer is neither the daemon's
// own user nor root. The file mode should already prevent them; this holds
// even if someone loosens the mode.
type peerCheckListener struct {
	*net.UnixListener
	uid  int
	lock *os.File // flock held while listening

	closeOnce sync.Once
	closeErr  error
}

// Close closes the listener, which removes the socket, then releases the
// lock.
func (l *peerCheckListener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.UnixListener.Close()
		l.lock.Close()
	})
	return l.closeErr
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == l.uid || uid == 0) {
			return c, nil
		}
		c.Close()
	}
}

// peerUID returns the uid of the process on the other end of c.
func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}
