package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// Sealer encrypts private key material at rest, for stores whose backend
// is shared or remote (etcd). The file store does not seal: its file is
// 0600 in a 0700 directory, and a key kept next to the file would protect
// nothing.
//
// additionalData binds a ciphertext to its key entry, so that sealed keys
// cannot be swapped between entries.
type Sealer interface {
	Seal(plaintext, additionalData []byte) ([]byte, error)
	Open(ciphertext, additionalData []byte) ([]byte, error)
}

// NewAESGCMSealer returns a Sealer using AES-256-GCM with key, which must
// be 32 bytes. Each Seal draws a fresh random 96-bit nonce and prepends it
// to the ciphertext; with the few writes a key set sees, random nonces are
// far from GCM's collision bound.
func NewAESGCMSealer(key []byte) (Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("keys: AES-256-GCM needs a 32-byte key, got %d bytes", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return gcmSealer{aead}, nil
}

type gcmSealer struct{ aead cipher.AEAD }

func (g gcmSealer) Seal(plaintext, additionalData []byte) ([]byte, error) {
	ns := g.aead.NonceSize()
	out := make([]byte, ns, ns+len(plaintext)+g.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("keys: drawing nonce: %w", err)
	}
	return g.aead.Seal(out, out[:ns], plaintext, additionalData), nil
}

func (g gcmSealer) Open(ciphertext, additionalData []byte) ([]byte, error) {
	ns := g.aead.NonceSize()
	if len(ciphertext) < ns+g.aead.Overhead() {
		return nil, errors.New("keys: sealed data is too short")
	}
	pt, err := g.aead.Open(nil, ciphertext[:ns], ciphertext[ns:], additionalData)
	if err != nil {
		return nil, errors.New("keys: cannot open sealed private key: wrong sealing key or tampered data")
	}
	return pt, nil
}
