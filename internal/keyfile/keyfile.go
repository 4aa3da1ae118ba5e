// Package keyfile owns Ed25519 key material on disk and its public
// representation: PEM (PKCS#8) private keys written with mode 0600, key ids,
// and the JSON key set served at /v1/keys and used to verify tokens.
//
// It must not know about receipts or tokens; both build on it.
package keyfile

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// AlgEd25519 is the only algorithm CompanyOS signs with.
const AlgEd25519 = "ed25519"

// KeyID names a public key: "ed25519:" + the first 16 bytes of
// SHA-256(raw public key), hex encoded. It is stable and derivable offline.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return AlgEd25519 + ":" + hex.EncodeToString(sum[:16])
}

// LoadOrCreate reads the PEM private key at path, or creates a new one (mode
// 0600, parent directories 0700) when the file does not exist. created reports
// whether a new key was written.
func LoadOrCreate(path string) (key ed25519.PrivateKey, created bool, err error) {
	key, err = Load(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	_, key, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("keyfile: generate: %w", err)
	}
	if err := Write(path, key); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// Load reads a PEM PKCS#8 Ed25519 private key.
func Load(path string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyfile: read %s: %w", path, err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("keyfile: %s: not a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keyfile: %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("keyfile: %s: not an Ed25519 key (%T)", path, k)
	}
	return ek, nil
}

// Write stores key as PEM PKCS#8 with mode 0600, atomically (temp + rename).
func Write(path string, key ed25519.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("keyfile: marshal: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	tmp := path + ".tmp"
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("keyfile: write: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("keyfile: rename: %w", err)
	}
	return nil
}

// PublicKey is one entry of a key set as served at GET /v1/keys.
type PublicKey struct {
	KeyID     string `json:"keyid"`
	Alg       string `json:"alg"`
	PublicKey string `json:"public_key"` // standard base64 of the 32 raw bytes
}

// KeySet is {"keys":[…]}.
type KeySet struct {
	Keys []PublicKey `json:"keys"`
}

// Public describes pub as a key-set entry.
func Public(pub ed25519.PublicKey) PublicKey {
	return PublicKey{KeyID: KeyID(pub), Alg: AlgEd25519, PublicKey: base64.StdEncoding.EncodeToString(pub)}
}

// Lookup returns the Ed25519 key with the given id.
func (s KeySet) Lookup(keyID string) (ed25519.PublicKey, bool) {
	for _, k := range s.Keys {
		if k.KeyID != keyID || k.Alg != AlgEd25519 {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(k.PublicKey)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, false
		}
		return ed25519.PublicKey(raw), true
	}
	return nil, false
}

// Validate checks every entry: known alg, 32-byte key, and a keyid that
// matches the key (so a key set cannot alias one key under another name).
func (s KeySet) Validate() error {
	var errs []error
	for i, k := range s.Keys {
		if k.Alg != AlgEd25519 {
			errs = append(errs, fmt.Errorf("keys[%d].alg: %q is not supported (want %q)", i, k.Alg, AlgEd25519))
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(k.PublicKey)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			errs = append(errs, fmt.Errorf("keys[%d].public_key: want base64 of %d bytes", i, ed25519.PublicKeySize))
			continue
		}
		if want := KeyID(raw); k.KeyID != want {
			errs = append(errs, fmt.Errorf("keys[%d].keyid: %q does not match the key (want %q)", i, k.KeyID, want))
		}
	}
	return errors.Join(errs...)
}

// ReadKeySet loads a JSON key set file and validates it.
func ReadKeySet(path string) (KeySet, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return KeySet{}, fmt.Errorf("keyfile: read key set: %w", err)
	}
	var ks KeySet
	if err := json.Unmarshal(raw, &ks); err != nil {
		return KeySet{}, fmt.Errorf("keyfile: %s: %w", path, err)
	}
	if err := ks.Validate(); err != nil {
		return KeySet{}, fmt.Errorf("keyfile: %s: %w", path, err)
	}
	return ks, nil
}
