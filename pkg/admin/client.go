package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// ErrNotRunning means no daemon answers on the admin socket; the CLI then
// works on the key store directly, under the store's lock.
var ErrNotRunning = errors.New("admin: no tsidp daemon is running")

// ErrUntrustedServer means the process serving the admin socket runs as
// neither this user nor root, so it may not be tsidp: anyone who can write
// to the socket's directory could have put their own listener there. The
// client refuses it before sending anything.
var ErrUntrustedServer = errors.New("admin: the admin socket is served by another user")

// untrustedError is the ErrUntrustedServer a dial returns.
type untrustedError struct {
	path    string
	uid, me int
}

func (e *untrustedError) Error() string {
	return fmt.Sprintf("admin: %s is served by a process running as uid %d, not as this user (uid %d) or root; refusing to talk to it: it may not be tsidp (whoever can write to %s could have replaced the socket). Check that directory's owner and mode, or run this command as uid %d if that is tsidp's user",
		e.path, e.uid, e.me, filepath.Dir(e.path), e.uid)
}

func (e *untrustedError) Is(target error) bool { return target == ErrUntrustedServer }

// Client talks to a daemon's admin socket.
type Client struct {
	path string
	hc   *http.Client
}

// clientTimeout bounds a request: RSA key generation during rotation can
// take a moment. The server's write timeout is longer, so that the client
// gives up first.
const clientTimeout = 60 * time.Second

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{
		path: path,
		hc: &http.Client{
			Timeout: clientTimeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return dialTrusted(ctx, path)
				},
			},
		},
	}
}

// dialTrusted connects to the socket at path and checks the peer
// credentials of the process that accepted: it must run as this user or as
// root, as the daemon's own listener requires of its clients. Otherwise the
// connection is closed before a byte is written, and the error wraps
// ErrUntrustedServer.
func dialTrusted(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	uid, err := peerUID(c.(*net.UnixConn))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("admin: reading the credentials of the process serving %s: %w", path, err)
	}
	if me := os.Getuid(); uid != me && uid != 0 {
		c.Close()
		return nil, &untrustedError{path: path, uid: uid, me: me}
	}
	return c, nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, "GET", "/v1/status", nil, &st)
}

var _ keys.Administrator = (*Client)(nil)

// List returns the daemon's keys and the status of its set.
func (c *Client) List(ctx context.Context) ([]keys.KeyInfo, keys.Status, error) {
	var kr KeysResponse
	if err := c.do(ctx, "GET", "/v1/keys", nil, &kr); err != nil {
		return nil, keys.Status{}, err
	}
	if kr.Status == nil {
		return nil, keys.Status{}, errors.New("admin: the daemon's key listing has no status")
	}
	return kr.Keys, *kr.Status, nil
}

// Init has the daemon add the keys its configuration asks for and its set
// lacks.
func (c *Client) Init(ctx context.Context) ([]keys.KeyInfo, error) {
	return c.change(ctx, "/v1/keys/init", struct{}{})
}

// Rotate rotates the keys of the given algorithms (all when empty).
func (c *Client) Rotate(ctx context.Context, algs []keys.Algorithm, force bool) ([]keys.KeyInfo, error) {
	return c.change(ctx, "/v1/keys/rotate", RotateRequest{Algorithms: algs, Force: force})
}

// Revoke revokes a key by kid.
func (c *Client) Revoke(ctx context.Context, kid string) ([]keys.KeyInfo, error) {
	return c.change(ctx, "/v1/keys/revoke", RevokeRequest{KID: kid})
}

// change posts req to path and returns the keys after the change.
func (c *Client) change(ctx context.Context, path string, req any) ([]keys.KeyInfo, error) {
	var kr KeysResponse
	if err := c.do(ctx, "POST", path, req, &kr); err != nil {
		return nil, err
	}
	return kr.Keys, nil
}

// Import imports a private key. It travels only over the admin socket,
// to a server this client checked runs as its own user or root.
func (c *Client) Import(ctx context.Context, pemOrJWK []byte, alg keys.Algorithm, activate bool) (keys.KeyInfo, error) {
	var ki keys.KeyInfo
	return ki, c.do(ctx, "POST", "/v1/keys/import", ImportRequest{Key: string(pemOrJWK), Algorithm: alg, Activate: activate}, &ki)
}

// ExportJWKS returns the daemon's public JWKS.
func (c *Client) ExportJWKS(ctx context.Context) ([]byte, error) {
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/v1/jwks", nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tsidp-admin"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := c.hc.Do(req)
	if err != nil {
		var ue *untrustedError
		if errors.As(err, &ue) {
			return ue
		}
		if isNotRunning(err) {
			return fmt.Errorf("%w (%s)", ErrNotRunning, c.path)
		}
		return fmt.Errorf("admin: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("admin: reading answer: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		var eb errorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
			return errors.New(eb.Error)
		}
		return fmt.Errorf("admin: %s", res.Status)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin: decoding answer: %w", err)
	}
	return nil
}

func isNotRunning(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}
