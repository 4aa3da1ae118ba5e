package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keystore"
)

// ActionPurgeManifest is the action of the receipt the purge planner appends
// after a purging entity.delete.
const ActionPurgeManifest = "purge.manifest"

// PurgeActor is the actor of purge manifests: the planner, acting on the
// delete's authority (the manifest names the delete receipt and approvals).
const PurgeActor = "system:purge-planner"

// KeyShredder destroys a subject's data keys (internal/keystore.Store).
type KeyShredder interface {
	Shred(ctx context.Context, tenant, subject, byReceipt string) ([]keystore.Shredded, error)
	Statuses(ctx context.Context, tenant, subject string) ([]keystore.Status, error)
}

// shred destroys the subject's keys on behalf of receipt byReceipt and
// returns every key that receipt destroyed, including on a retry (the
// keystore records who shredded what, so the manifest is stable).
func (p *Processor) shred(ctx context.Context, tenant, subject, byReceipt string) ([]int64, error) {
	ks, ok := p.cfg.SubjectKeys.(KeyShredder)
	if p.cfg.SubjectKeys == nil || !ok {
		return nil, nil // no keystore: nothing was ever sealed
	}
	if _, err := ks.Shred(ctx, tenant, subject, byReceipt); err != nil {
		return nil, err
	}
	sts, err := ks.Statuses(ctx, tenant, subject)
	if err != nil {
		return nil, err
	}
	ids := []int64{}
	for _, st := range sts {
		if st.ShreddedBy == byReceipt {
			ids = append(ids, st.KeyID)
		}
	}
	return ids, nil
}

// purgeManifest is the purge planner: after the delete receipt del (already
// applied to st), it lists everything erased — the entity's remaining
// attributes, its relations, the selective values of its receipts (now
// unrecoverable: keys shredded) and their evidence blobs — and appends it as
// a signed receipt right after the delete.
func (p *Processor) purgeManifest(st *TenantState, partition int32, del events.Receipt, change *events.Change, shredded []int64, policyVersion string) *kgo.Record {
	pm := &events.Purge{
		Subject: del.Subject, DeleteReceipt: del.ID, Requester: del.Actor,
		Approvals: slices.Clone(change.Consumed), Relations: slices.Clone(change.Unlinked),
		Selective: []events.PurgedSelective{}, ShreddedKeys: shredded, Evidence: []string{},
	}
	if pm.Approvals == nil {
		pm.Approvals = []string{}
	}
	if pm.Relations == nil {
		pm.Relations = []events.Relation{}
	}
	for _, ref := range st.selective[del.Subject] {
		pm.Selective = append(pm.Selective, ref.PurgedSelective)
		if !slices.Contains(pm.Evidence, ref.evidence) {
			pm.Evidence = append(pm.Evidence, ref.evidence)
		}
	}
	commandID := "purge-" + del.CommandID
	cmd, _ := json.Marshal(map[string]any{"type": ActionPurgeManifest, "payload": map[string]any{"delete_receipt": del.ID, "subject": del.Subject}})
	c := &events.Change{Op: events.OpPurge, Purge: pm}
	seq, prev := st.Chain.Next()
	r := events.Receipt{
		ID: ReceiptIDFor(commandID), Action: ActionPurgeManifest, Actor: PurgeActor, Tenant: del.Tenant,
		Decision: events.DecisionAllow, EvidenceHash: events.EvidenceHash(cmd), PolicyVersion: policyVersion,
		CreatedAt: del.CreatedAt, Selective: map[string]string{}, Seq: seq, PrevHash: prev, CommandID: commandID,
		Subject: del.Subject, Command: cmd, Obligations: json.RawMessage("[]"),
	}
	r.Rationale, _ = json.Marshal([]map[string]any{{"rule": "purge_planner", "result": true,
		"message":    fmt.Sprintf("erasure ordered by %s (%s) with %d approval(s)", del.ID, del.Actor, len(pm.Approvals)),
		"attributes": map[string]any{"delete_receipt": del.ID, "approvals": pm.Approvals}}})
	r.Change, _ = json.Marshal(c)
	payload, err := events.MarshalReceipt(r)
	if err != nil {
		panic(fmt.Sprintf("processor: purge manifest: %v", err)) // plain structs: cannot fail
	}
	env := p.cfg.Signer.Sign(payload)
	value, _ := env.Marshal()
	if err := st.applyOwn(r, payload, c); err != nil {
		panic(fmt.Sprintf("processor: own purge manifest rejected: %v", err))
	}
	return &kgo.Record{Topic: events.TopicEvents, Partition: partition, Key: []byte(del.Tenant), Value: value,
		Headers: []kgo.RecordHeader{{Key: "receipt_id", Value: []byte(r.ID)}, {Key: "tenant", Value: []byte(r.Tenant)}, {Key: "decision", Value: []byte(r.Decision)}}}
}

// Approval lifetimes.
const (
	DefaultApprovalTTL = 24 * time.Hour
	MaxApprovalTTL     = 7 * 24 * time.Hour
)

var errApprovalExpiry = errors.New("approval expiry")

// approvalExpiry resolves an approval's expiry at now.
func approvalExpiry(a *ApprovalGrant, now time.Time) (time.Time, *httpx.Problem) {
	if a.ExpiresAt == nil {
		return now.Add(DefaultApprovalTTL).UTC().Truncate(time.Second), nil
	}
	exp := a.ExpiresAt.UTC()
	switch {
	case !exp.After(now):
		return time.Time{}, fieldProblem("payload.expires_at", fmt.Sprintf("%s: %s is not in the future", errApprovalExpiry, exp.Format(time.RFC3339)))
	case exp.Sub(now) > MaxApprovalTTL:
		return time.Time{}, fieldProblem("payload.expires_at", fmt.Sprintf("%s: at most %s ahead", errApprovalExpiry, MaxApprovalTTL))
	}
	return exp, nil
}

// fieldProblem is a 422 naming one field.
func fieldProblem(field, detail string) *httpx.Problem {
	p := httpx.NewProblem(http.StatusUnprocessableEntity, "validation", detail)
	p.Errors = []httpx.FieldError{{Field: field, Detail: detail}}
	return p
}
