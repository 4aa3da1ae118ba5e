// Package audittest generates realistic, validly signed receipt chains for
// the audit package's tests and benchmarks. It must not be imported by
// production code.
package audittest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/companyos/companyos/events"
)

// Chain generates one tenant's receipts: consecutive seqs, a correct
// prev_hash chain and DSSE signatures by Signer. It is not safe for
// concurrent use.
type Chain struct {
	Tenant string
	Signer *events.Signer
	// Start is the created_at of seq 1; each receipt is Step later.
	Start time.Time
	Step  time.Duration

	chain events.Chain
}

// NewChain starts tenant's chain at seq 1.
func NewChain(tenant string, signer *events.Signer, start time.Time) *Chain {
	return &Chain{Tenant: tenant, Signer: signer, Start: start, Step: time.Millisecond, chain: events.NewChain()}
}

// Head is the chain state after the last Next.
func (c *Chain) Head() events.Chain { return c.chain }

// Append advances the chain past r (encoded as payload), which must be its
// next receipt; callers that sign elsewhere (in parallel) use it with Receipt.
func (c *Chain) Append(r events.Receipt, payload []byte) error { return c.chain.Append(r, payload) }

// Receipt builds the next receipt without signing or advancing the chain:
// a realistic payload (rationale, command, change; about 1 KiB encoded).
func (c *Chain) Receipt() events.Receipt {
	seq, prev := c.chain.Next()
	return Build(c.Tenant, seq, prev, c.Start.Add(time.Duration(seq-1)*c.Step))
}

// Next builds, optionally mutates, encodes and signs the next receipt, and
// advances the chain when the result still extends it. It returns the
// payload and the envelope as stored (the Kafka record value).
func (c *Chain) Next(mutate func(*events.Receipt)) (payload, envelope []byte) {
	r := c.Receipt()
	if mutate != nil {
		mutate(&r)
	}
	payload, err := events.MarshalReceipt(r)
	if err != nil {
		panic(err) // a Receipt always encodes
	}
	_ = c.chain.Append(r, payload) // a mutated seq/prev_hash simply does not advance
	envelope, err = c.Signer.Sign(payload).Marshal()
	if err != nil {
		panic(err)
	}
	return payload, envelope
}

// Build returns a deterministic receipt of tenant at seq with prev_hash prev.
func Build(tenant string, seq uint64, prev string, at time.Time) events.Receipt {
	entity := fmt.Sprintf("svc:%s-%d", tenant, seq%5000)
	cmd := fmt.Sprintf(`{"tenant":%q,"type":"entity.update","expected_version":%d,"payload":{"id":%q,"kind":"service","attrs":{"owner":"team:payments","tier":"%d","region":"eu-west-1","repo":"git@example.com:acme/svc-%d.git","oncall":"group:sre-%d","cost_center":"cc-%04d"}}}`,
		tenant, seq/5000+1, entity, seq%3, seq%5000, seq%7, seq%1000)
	change := fmt.Sprintf(`{"op":"entity.put","entity":{"id":%q,"kind":"service","attrs":{"cost_center":"cc-%04d","oncall":"group:sre-%d","owner":"team:payments","region":"eu-west-1","repo":"git@example.com:acme/svc-%d.git","tier":"%d"},"version":%d}}`,
		entity, seq%1000, seq%7, seq%5000, seq%3, seq/5000+2)
	decision := events.DecisionAllow
	if seq%10 == 0 {
		decision = events.DecisionDeny
		change = "null"
	}
	id := sha256.Sum256(fmt.Appendf(nil, "%s/%d", tenant, seq))
	return events.Receipt{
		ID:            "rcpt_" + hex.EncodeToString(id[:16]),
		Action:        "entity.update",
		Actor:         fmt.Sprintf("user:u%03d", seq%200),
		Tenant:        tenant,
		Decision:      decision,
		EvidenceHash:  events.EvidenceHash([]byte(cmd)),
		PolicyVersion: "1.8.0+sha256:0123456789ab",
		CreatedAt:     at.UTC(),
		Selective:     map[string]string{},
		Seq:           seq,
		PrevHash:      prev,
		CommandID:     fmt.Sprintf("cmd_%032x", seq),
		Rationale:     json.RawMessage(fmt.Sprintf(`[{"rule":"data.companyos.authz.allow_owner","result":%t,"message":"actor owns the subject through team:payments","attributes":{"actor.roles":["engineer"],"subject.tier":"%d","mfa":true}}]`, decision == events.DecisionAllow, seq%3)),
		Obligations:   json.RawMessage(`[]`),
		Subject:       entity,
		Command:       json.RawMessage(cmd),
		Change:        json.RawMessage(change),
	}
}
