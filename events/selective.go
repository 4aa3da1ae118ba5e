package events

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Selective disclosure (DESIGN decision 4).
//
// A selective field's value never enters the signed payload. The payload's
// "selective" map holds, per field, a salted commitment
//
//	"sha256:" + hex(SHA-256("companyos-commit-v1" 0x00 field 0x00 salt value))
//
// where salt is 32 bytes and value is the field's JSON encoding. The value
// and its salt travel next to the envelope, encrypted with the subject's data
// key (AES-256-GCM), in the Kafka record header DisclosureHeader. Whoever
// holds (salt, value) can prove it against the signed commitment; destroying
// the subject's key (crypto-shredding) makes the value unrecoverable while
// every receipt still verifies.

// SaltSize is the length of a commitment salt.
const SaltSize = 32

// DisclosureHeader is the Kafka record header carrying a receipt's encrypted
// selective values (JSON, DisclosureSet).
const DisclosureHeader = "companyos-disclosures"

// ErrCommitmentMismatch reports a disclosed value that does not match the
// commitment in the signed payload.
var ErrCommitmentMismatch = errors.New("events: disclosed value does not match its commitment")

// Commit returns the commitment to value (its JSON encoding) for field.
func Commit(field string, salt, value []byte) string {
	h := sha256.New()
	h.Write([]byte("companyos-commit-v1\x00"))
	h.Write([]byte(field))
	h.Write([]byte{0})
	h.Write(salt)
	h.Write(value)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// Disclosure is one revealed selective value, verifiable against the
// commitment in its receipt.
type Disclosure struct {
	Field string          `json:"field"`
	Salt  []byte          `json:"salt"`  // base64 in JSON
	Value json.RawMessage `json:"value"` // the field's JSON value
}

// VerifyDisclosure checks d against the receipt's commitment for d.Field.
func VerifyDisclosure(r Receipt, d Disclosure) error {
	want, ok := r.Selective[d.Field]
	if !ok {
		return fmt.Errorf("%w: receipt %s has no selective field %q", ErrCommitmentMismatch, r.ID, d.Field)
	}
	if len(d.Salt) != SaltSize {
		return fmt.Errorf("%w: receipt %s field %q: salt is %d bytes, want %d", ErrCommitmentMismatch, r.ID, d.Field, len(d.Salt), SaltSize)
	}
	got := Commit(d.Field, d.Salt, d.Value)
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return fmt.Errorf("%w: receipt %s field %q", ErrCommitmentMismatch, r.ID, d.Field)
	}
	return nil
}

// DeriveSalt derives a field's salt from the subject key, so a retried
// command commits to the same bytes (idempotency compares body hashes) and a
// shredded key takes the salts with it (no brute-forcing small values).
func DeriveSalt(subjectKey []byte, commandID, field string) []byte {
	m := hmac.New(sha256.New, subjectKey)
	m.Write([]byte("companyos-salt-v1\x00"))
	m.Write([]byte(commandID))
	m.Write([]byte{0})
	m.Write([]byte(field))
	return m.Sum(nil)
}

// SealedValue is one selective value encrypted under its subject's key.
type SealedValue struct {
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ct"`
}

// DisclosureSet is the DisclosureHeader value: every selective value of one
// receipt, sealed under the key of Subject (in Tenant).
type DisclosureSet struct {
	Tenant  string                 `json:"tenant"`
	Subject string                 `json:"subject"`
	KeyID   int64                  `json:"key_id"` // the subject key (internal/keystore)
	Fields  map[string]SealedValue `json:"fields"`
}

// sealedPlain is what a SealedValue decrypts to.
type sealedPlain struct {
	Salt  []byte          `json:"salt"`
	Value json.RawMessage `json:"value"`
}

func aad(receiptID, field string) []byte { return []byte(receiptID + "\x00" + field) }

func gcm(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("events: subject key is %d bytes, want 32", len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Seal encrypts d under the subject key, bound to receiptID and the field.
func Seal(subjectKey []byte, receiptID string, d Disclosure) (SealedValue, error) {
	a, err := gcm(subjectKey)
	if err != nil {
		return SealedValue{}, err
	}
	plain, err := json.Marshal(sealedPlain{Salt: d.Salt, Value: d.Value})
	if err != nil {
		return SealedValue{}, fmt.Errorf("events: seal %q: %w", d.Field, err)
	}
	nonce := make([]byte, a.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return SealedValue{}, err
	}
	return SealedValue{Nonce: nonce, Ciphertext: a.Seal(nil, nonce, plain, aad(receiptID, d.Field))}, nil
}

// Open decrypts a sealed value of receiptID's field.
func Open(subjectKey []byte, receiptID, field string, s SealedValue) (Disclosure, error) {
	a, err := gcm(subjectKey)
	if err != nil {
		return Disclosure{}, err
	}
	plain, err := a.Open(nil, s.Nonce, s.Ciphertext, aad(receiptID, field))
	if err != nil {
		return Disclosure{}, fmt.Errorf("events: open %s %q: %w", receiptID, field, err)
	}
	var p sealedPlain
	if err := json.Unmarshal(plain, &p); err != nil {
		return Disclosure{}, fmt.Errorf("events: open %s %q: %w", receiptID, field, err)
	}
	return Disclosure{Field: field, Salt: p.Salt, Value: p.Value}, nil
}

// CommitmentRef is how a redacted value appears in a receipt's command and
// change: {"$selective":"sha256:…"} in place of the value.
type CommitmentRef struct {
	Selective string `json:"$selective"`
}

// IsCommitmentRef reports whether v (a decoded JSON value) is a CommitmentRef.
func IsCommitmentRef(v any) bool {
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return false
	}
	s, ok := m["$selective"].(string)
	return ok && strings.HasPrefix(s, "sha256:")
}

// CanonicalValue is the JSON encoding a value is committed to: compact, no
// HTML escaping, so every party derives the same bytes.
func CanonicalValue(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
