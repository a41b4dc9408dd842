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
	"syscall"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// ErrNotRunning means no daemon answers on the admin socket; the CLI then
// works on the key store directly, under the store's lock.
var ErrNotRunning = errors.New("admin: no tsidp daemon is running")

// Client talks to a daemon's admin socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{
		path: path,
		hc: &http.Client{
			Timeout: 60 * time.Second, // RSA key generation during rotation can take a moment
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			},
		},
	}
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, "GET", "/v1/status", nil, &st)
}

// Keys lists the keys.
func (c *Client) Keys(ctx context.Context) (*KeysResponse, error) {
	var kr KeysResponse
	return &kr, c.do(ctx, "GET", "/v1/keys", nil, &kr)
}

// Rotate rotates the keys of the given algorithms (all when empty).
func (c *Client) Rotate(ctx context.Context, req RotateRequest) (*KeysResponse, error) {
	var kr KeysResponse
	return &kr, c.do(ctx, "POST", "/v1/keys/rotate", req, &kr)
}

// Revoke revokes a key by kid.
func (c *Client) Revoke(ctx context.Context, kid string) (*KeysResponse, error) {
	var kr KeysResponse
	return &kr, c.do(ctx, "POST", "/v1/keys/revoke", RevokeRequest{KID: kid}, &kr)
}

// Import imports a private key.
func (c *Client) Import(ctx context.Context, req ImportRequest) (keys.KeyInfo, error) {
	var ki keys.KeyInfo
	return ki, c.do(ctx, "POST", "/v1/keys/import", req, &ki)
}

// JWKS returns the daemon's public JWKS.
func (c *Client) JWKS(ctx context.Context) ([]byte, error) {
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
