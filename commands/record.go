package commands

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/companyos/companyos/internal/httpx"
)

// Request is the value of a companyos.commands.v1 record: one accepted
// command, with who sent it, waiting for the processor's decision.
type Request struct {
	// RequestID names this HTTP request; the reply carries it back.
	RequestID string `json:"request_id"`
	// CommandID identifies the command: derived from the Idempotency-Key when
	// one is given (so retries collapse), random otherwise.
	CommandID      string    `json:"command_id"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Principal      Principal `json:"principal"`
	ReceivedAt     time.Time `json:"received_at"`
	// Deadline is when the waiting HTTP request gives up. A command still
	// undecided by then is not executed (no receipt): the caller already got
	// 504 and will retry with its Idempotency-Key, and under overload the
	// processor does not waste work on answers nobody is waiting for.
	Deadline time.Time `json:"deadline,omitzero"`
	// Command is the validated command in its canonical (compact) bytes; the
	// receipt embeds the same bytes and evidence_hash is their hash.
	Command json.RawMessage `json:"command"`
	// Preflight asks for the decision only: the processor evaluates the
	// command against the same state and policy, appends nothing and
	// answers with a Preflight reply.
	Preflight bool `json:"preflight,omitempty"`
}

// PreflightResult is the answer to a preflight request (POST
// /v1/policy/preflight): what the command would get, without executing it.
type PreflightResult struct {
	Decision      string          `json:"decision"` // allow or deny
	Rationale     json.RawMessage `json:"rationale"`
	Obligations   json.RawMessage `json:"obligations"`
	PolicyVersion string          `json:"policy_version"`
	// Status is the HTTP status the command would get now (201, 403, or a
	// rejection such as 404/409 when the policy allows but state refuses);
	// Problem explains a rejection.
	Status  int            `json:"status"`
	Problem *httpx.Problem `json:"problem,omitempty"`
	// Input is the policy input the decision was made on: the resolved
	// principal and resource attributes (selective values redacted).
	Input json.RawMessage `json:"input"`
}

// Reply is the value of a companyos.replies.v1 record: the processor's answer
// to one Request, read by the API instance that is waiting for it.
type Reply struct {
	RequestID   string         `json:"request_id"`
	CommandID   string         `json:"command_id"`
	Status      int            `json:"status"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	Decision    string         `json:"decision,omitempty"`
	Seq         uint64         `json:"seq,omitempty"`
	Version     uint64         `json:"version,omitempty"`
	Consistency string         `json:"consistency,omitempty"`
	Replayed    bool           `json:"replayed,omitempty"`
	Problem     *httpx.Problem `json:"problem,omitempty"`
	// Preflight is the answer to a preflight request.
	Preflight *PreflightResult `json:"preflight,omitempty"`
}

// CommandIDFor derives the command id of an idempotent request: the same
// tenant, principal and key always name the same command.
func CommandIDFor(tenant, principal, idempotencyKey string) string {
	sum := sha256.Sum256([]byte("companyos.command.v1\x00" + tenant + "\x00" + principal + "\x00" + idempotencyKey))
	return "cmd_" + hex.EncodeToString(sum[:16])
}

// RandomID returns prefix + 32 random hex digits.
func RandomID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// ReceiptIDFor is the receipt id of a command: deterministic, so a command
// can never be receipted under two ids.
func ReceiptIDFor(commandID string) string {
	sum := sha256.Sum256([]byte("companyos.receipt.v1\x00" + commandID))
	return "rcpt_" + hex.EncodeToString(sum[:16])
}
