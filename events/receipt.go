package events

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Decision values carried by receipts.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// GenesisHash is prev_hash of a tenant's first receipt (seq 1).
const GenesisHash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

// Receipt is the signed payload (schemas/receipt.v1.schema.json documents it).
// Field order is the wire order; the signature covers the exact bytes, so
// verifiers never re-encode it.
type Receipt struct {
	ID            string            `json:"id"`
	Action        string            `json:"action"`
	Actor         string            `json:"actor"`
	Tenant        string            `json:"tenant"`
	Decision      string            `json:"decision"`
	EvidenceHash  string            `json:"evidence_hash"`
	PolicyVersion string            `json:"policy_version"`
	CreatedAt     time.Time         `json:"created_at"`
	Selective     map[string]string `json:"selective"`
	Seq           uint64            `json:"seq"`
	PrevHash      string            `json:"prev_hash"`
	CommandID     string            `json:"command_id"`
	Rationale     json.RawMessage   `json:"rationale"`
	Obligations   json.RawMessage   `json:"obligations"`
	// Subject is the entity the command is about ("svc:A").
	Subject string `json:"subject"`
	// Command is the command as submitted: {"type":…,"payload":…,"expected_version":…}.
	Command json.RawMessage `json:"command"`
	// Change is the state change an allowed receipt applies; null for a deny.
	Change json.RawMessage `json:"change"`
	// Principal is the caller as authenticated (token roles, MFA), so the
	// decision can be re-evaluated later (policy simulation, audit). Absent
	// in receipts written before it was added.
	Principal *ReceiptPrincipal `json:"principal,omitempty"`
}

// ReceiptPrincipal is the authenticated caller of a command.
type ReceiptPrincipal struct {
	ID       string    `json:"id"`
	Roles    []string  `json:"roles"` // asserted by the token
	MFA      bool      `json:"mfa"`
	AuthTime time.Time `json:"auth_time,omitzero"`
}

// HashPayload is the chain link: "sha256:" + hex(SHA-256(payload bytes)).
func HashPayload(payload []byte) string {
	sum := sha256.Sum256(payload)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// EvidenceHash hashes command evidence the same way.
func EvidenceHash(b []byte) string { return HashPayload(b) }

// MarshalReceipt encodes r as payload bytes. It never HTML-escapes, so the
// bytes equal what any standard JSON encoder reading them would expect.
func MarshalReceipt(r Receipt) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("events: encode receipt: %w", err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// ParseReceipt decodes payload bytes.
func ParseReceipt(payload []byte) (Receipt, error) {
	var r Receipt
	if err := json.Unmarshal(payload, &r); err != nil {
		return Receipt{}, fmt.Errorf("%w: receipt payload: %v", ErrBadEnvelope, err)
	}
	return r, nil
}

// ErrChainBroken reports a gap, a fork or a wrong prev_hash in a tenant chain.
var ErrChainBroken = errors.New("events: hash chain broken")

// Chain tracks the head of one tenant's hash chain.
type Chain struct {
	Seq  uint64 // seq of the last receipt, 0 before the first
	Head string // HashPayload of the last receipt's payload, GenesisHash before the first
}

// NewChain is the state before seq 1.
func NewChain() Chain { return Chain{Head: GenesisHash} }

// Next returns the (seq, prev_hash) the next receipt must carry.
func (c Chain) Next() (uint64, string) { return c.Seq + 1, c.Head }

// Append checks that payload (decoded as r) extends the chain and advances it.
func (c *Chain) Append(r Receipt, payload []byte) error {
	seq, prev := c.Next()
	if r.Seq != seq {
		return fmt.Errorf("%w: tenant %s: seq %d, want %d", ErrChainBroken, r.Tenant, r.Seq, seq)
	}
	if r.PrevHash != prev {
		return fmt.Errorf("%w: tenant %s seq %d: prev_hash %s, want %s", ErrChainBroken, r.Tenant, r.Seq, r.PrevHash, prev)
	}
	c.Seq = seq
	c.Head = HashPayload(payload)
	return nil
}
