package etcdstore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tsidp/tsidp/pkg/keys"
)

// KEKSize is the size of a key-encryption key: AES-256.
const KEKSize = 32

// LoadKEK reads a key-encryption key from path and returns the sealer for
// it. The file holds the 32-byte key in one of three forms:
//
//   - exactly 32 raw bytes (head -c 32 /dev/urandom > kek);
//   - 64 hexadecimal digits (openssl rand -hex 32 > kek);
//   - base64, standard or URL alphabet, padded or not (openssl rand
//     -base64 32 > kek).
//
// Surrounding whitespace (a trailing newline) is ignored in the text forms.
// The file must be a regular file that neither group nor others can read
// or write: the KEK protects every private key in etcd.
func LoadKEK(path string) (keys.Sealer, error) {
	k, err := ReadKEK(path)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	sl, err := keys.NewAESGCMSealer(k)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %w", err)
	}
	return sl, nil
}

// ReadKEK reads and decodes a key-encryption key file; see LoadKEK.
func ReadKEK(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("etcdstore: no key-encryption key file (--kek-file, keys.etcd.kek_file): private keys in etcd must be encrypted")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: key-encryption key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("etcdstore: key-encryption key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("etcdstore: key-encryption key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("etcdstore: key-encryption key %s has mode %#o; it must not be accessible to group or others (chmod 0400 %s)", path, perm, path)
	}
	raw, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("etcdstore: key-encryption key %s: %w", path, err)
	}
	defer clear(raw)
	k, err := decodeKEK(raw)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: key-encryption key %s: %w", path, err)
	}
	return k, nil
}

// decodeKEK decodes the file forms LoadKEK accepts. Its errors describe
// lengths and forms only, never content.
func decodeKEK(raw []byte) ([]byte, error) {
	if len(raw) == KEKSize {
		// 32 random bytes are all printable with probability ~1e-14: such
		// a file is text, e.g. `openssl rand -hex 16` without its newline,
		// and using it as a raw key would silently halve its strength.
		if printable(raw) {
			return nil, fmt.Errorf("the file has %d printable characters, which looks like text rather than %d raw bytes; want %d raw bytes, %d hex digits or base64 of %d bytes", len(raw), KEKSize, KEKSize, 2*KEKSize, KEKSize)
		}
		return bytes.Clone(raw), nil
	}
	text := bytes.TrimSpace(raw)
	if len(text) == 2*KEKSize {
		if k, err := hex.DecodeString(string(text)); err == nil {
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(string(text)); err == nil {
			if len(k) == KEKSize {
				return k, nil
			}
			clear(k)
		}
	}
	return nil, fmt.Errorf("want %d raw bytes, %d hex digits or base64 of %d bytes; the file has %d bytes in none of these forms", KEKSize, 2*KEKSize, KEKSize, len(raw))
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
