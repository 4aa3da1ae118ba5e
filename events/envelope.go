// Package events owns the log: the receipt payload, its DSSE envelope and
// Ed25519 signature, the per-tenant hash chain, topic names, and the Kafka
// plumbing (embedded broker, clients, topic creation).
//
// It must not know about command semantics (commands/) or read models
// (projections/); they import it, never the reverse.
package events

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/companyos/companyos/internal/keyfile"
)

// PayloadType is the DSSE payloadType of every receipt.
const PayloadType = "application/vnd.companyos.receipt.v1+json"

// Envelope is a DSSE envelope (https://github.com/secure-systems-lab/dsse).
// Payload holds the exact signed bytes; JSON encodes them as standard base64.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one DSSE signature over PAE(payloadType, payload).
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// Sentinel errors returned (wrapped) by verification.
var (
	ErrBadEnvelope  = errors.New("events: malformed envelope")
	ErrUnknownKey   = errors.New("events: unknown signing key")
	ErrBadSignature = errors.New("events: signature does not verify")
)

// PAE is DSSE's pre-authentication encoding:
// "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
func PAE(payloadType string, payload []byte) []byte {
	b := make([]byte, 0, 32+len(payloadType)+len(payload))
	b = append(b, "DSSEv1 "...)
	b = strconv.AppendInt(b, int64(len(payloadType)), 10)
	b = append(b, ' ')
	b = append(b, payloadType...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	b = append(b, ' ')
	b = append(b, payload...)
	return b
}

// Signer signs receipt payloads with one Ed25519 key.
type Signer struct {
	key   ed25519.PrivateKey
	keyID string
}

// NewSigner returns a signer for key; its key id is keyfile.KeyID(public).
func NewSigner(key ed25519.PrivateKey) *Signer {
	return &Signer{key: key, keyID: keyfile.KeyID(key.Public().(ed25519.PublicKey))}
}

// KeyID names the signing key.
func (s *Signer) KeyID() string { return s.keyID }

// Public returns the key-set entry for the signing key.
func (s *Signer) Public() keyfile.PublicKey {
	return keyfile.Public(s.key.Public().(ed25519.PublicKey))
}

// Sign wraps payload (exact bytes) in a signed envelope.
func (s *Signer) Sign(payload []byte) Envelope {
	sig := ed25519.Sign(s.key, PAE(PayloadType, payload))
	return Envelope{PayloadType: PayloadType, Payload: payload, Signatures: []Signature{{KeyID: s.keyID, Sig: sig}}}
}

// Marshal encodes the envelope as the Kafka record value.
func (e Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// ParseEnvelope decodes a record value.
func ParseEnvelope(b []byte) (Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	if e.PayloadType != PayloadType {
		return Envelope{}, fmt.Errorf("%w: payloadType %q, want %q", ErrBadEnvelope, e.PayloadType, PayloadType)
	}
	if len(e.Signatures) == 0 {
		return Envelope{}, fmt.Errorf("%w: no signatures", ErrBadEnvelope)
	}
	return e, nil
}

// Verify checks that at least one signature is by a key in keys and that
// every signature by a known key verifies. Unknown key ids alone are an error.
func (e Envelope) Verify(keys keyfile.KeySet) error {
	if e.PayloadType != PayloadType {
		return fmt.Errorf("%w: payloadType %q", ErrBadEnvelope, e.PayloadType)
	}
	msg := PAE(e.PayloadType, e.Payload)
	verified := 0
	for _, s := range e.Signatures {
		pub, ok := keys.Lookup(s.KeyID)
		if !ok {
			continue
		}
		if !ed25519.Verify(pub, msg, s.Sig) {
			return fmt.Errorf("%w: keyid %s", ErrBadSignature, s.KeyID)
		}
		verified++
	}
	if verified == 0 {
		ids := make([]string, 0, len(e.Signatures))
		for _, s := range e.Signatures {
			ids = append(ids, s.KeyID)
		}
		return fmt.Errorf("%w: %v", ErrUnknownKey, ids)
	}
	return nil
}
