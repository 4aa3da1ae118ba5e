package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/companyos/companyos/events"
)

// ErasureLineage proves one erasure end to end: who asked, who approved,
// the signed purge manifest, and that the subject's keys are destroyed and
// its sealed values gone — while every receipt involved still verifies.
type ErasureLineage struct {
	Tenant  string `json:"tenant"`
	Subject string `json:"subject"`
	// Request is the entity.delete receipt; Approvals the approval.grant
	// receipts it consumed (ids, approvers, seqs).
	Request   LineageReceipt   `json:"request"`
	Approvals []LineageReceipt `json:"approvals"`
	Manifest  LineageReceipt   `json:"manifest"`
	// ShreddedKeys are the manifest's keys with their keystore state.
	ShreddedKeys []ShreddedKey `json:"shredded_keys"`
	// ErasedReceipts are the receipts whose selective values were erased.
	ErasedReceipts int `json:"erased_receipts"`
	// SealedValuesLeft counts disclosures rows still stored for the subject
	// (0 when the erasure is complete).
	SealedValuesLeft int `json:"sealed_values_left"`
	// Complete: every receipt in the lineage verified, every key destroyed,
	// no sealed value left.
	Complete bool     `json:"complete"`
	Problems []string `json:"problems,omitempty"`
}

// LineageReceipt is one receipt of a lineage.
type LineageReceipt struct {
	ID       string    `json:"id"`
	Seq      int64     `json:"seq"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	At       time.Time `json:"created_at"`
	Verified bool      `json:"verified"`
}

// ShreddedKey is a destroyed subject key as the keystore records it.
type ShreddedKey struct {
	KeyID      int64      `json:"key_id"`
	ShreddedAt *time.Time `json:"shredded_at,omitempty"`
	ShreddedBy string     `json:"shredded_by,omitempty"`
	Destroyed  bool       `json:"destroyed"`
}

// erasureLineages reads every purge manifest of the replayed scope from the
// live ledger (which the replay has just compared with the log) and checks
// its lineage.
func (r *replayer) erasureLineages(ctx context.Context) ([]ErasureLineage, error) {
	q := "SELECT " + receiptColumns + " FROM receipts WHERE action = $1"
	args := []any{purgeManifestAction}
	if r.cfg.Tenant != "" {
		q += " AND tenant = $2"
		args = append(args, r.cfg.Tenant)
	}
	rows, err := r.cfg.Pool.Query(ctx, q+" ORDER BY tenant, seq", args...)
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: erasures: %w", err)
	}
	manifests, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Receipt, error) { return scanReceipt(row) })
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: erasures: %w", err)
	}
	out := []ErasureLineage{}
	for _, m := range manifests {
		l := ErasureLineage{Tenant: m.Tenant, Subject: m.Subject, Manifest: r.lineageReceipt(m)}
		env, _ := events.ParseEnvelope(m.Envelope)
		var body struct {
			Change events.Change `json:"change"`
		}
		if err := json.Unmarshal(env.Payload, &body); err != nil || body.Change.Purge == nil {
			l.Problems = append(l.Problems, "manifest carries no purge change")
			out = append(out, l)
			continue
		}
		p := body.Change.Purge
		l.ErasedReceipts = len(p.Selective)
		ids := append([]string{p.DeleteReceipt}, p.Approvals...)
		rows, err := r.cfg.Pool.Query(ctx, "SELECT "+receiptColumns+" FROM receipts WHERE id = ANY($1)", ids)
		if err != nil {
			return nil, fmt.Errorf("ledger: replay: erasure lineage: %w", err)
		}
		found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Receipt, error) { return scanReceipt(row) })
		if err != nil {
			return nil, fmt.Errorf("ledger: replay: erasure lineage: %w", err)
		}
		byID := map[string]Receipt{}
		for _, f := range found {
			byID[f.ID] = f
		}
		if d, ok := byID[p.DeleteReceipt]; ok {
			l.Request = r.lineageReceipt(d)
		} else {
			l.Problems = append(l.Problems, "delete receipt "+p.DeleteReceipt+" is not in the ledger")
		}
		for _, id := range p.Approvals {
			if a, ok := byID[id]; ok {
				l.Approvals = append(l.Approvals, r.lineageReceipt(a))
			} else {
				l.Problems = append(l.Problems, "approval "+id+" is not in the ledger")
			}
		}
		for _, id := range p.ShreddedKeys {
			k := ShreddedKey{KeyID: id}
			var wrapped []byte
			err := r.cfg.Pool.QueryRow(ctx, "SELECT wrapped_key, shredded_at, coalesce(shredded_by, '') FROM subject_keys WHERE key_id = $1", id).
				Scan(&wrapped, &k.ShreddedAt, &k.ShreddedBy)
			switch {
			case err == pgx.ErrNoRows:
				l.Problems = append(l.Problems, fmt.Sprintf("key %d is unknown to the keystore", id))
			case err != nil:
				return nil, fmt.Errorf("ledger: replay: keystore: %w", err)
			default:
				k.Destroyed = wrapped == nil && k.ShreddedAt != nil
				if !k.Destroyed {
					l.Problems = append(l.Problems, fmt.Sprintf("key %d still exists", id))
				}
			}
			l.ShreddedKeys = append(l.ShreddedKeys, k)
		}
		if err := r.cfg.Pool.QueryRow(ctx, "SELECT count(*) FROM disclosures WHERE tenant = $1 AND subject = $2", m.Tenant, p.Subject).
			Scan(&l.SealedValuesLeft); err != nil {
			return nil, fmt.Errorf("ledger: replay: disclosures: %w", err)
		}
		if l.SealedValuesLeft > 0 {
			l.Problems = append(l.Problems, fmt.Sprintf("%d sealed values of the subject are still stored", l.SealedValuesLeft))
		}
		for _, lr := range append([]LineageReceipt{l.Request, l.Manifest}, l.Approvals...) {
			if lr.ID != "" && !lr.Verified {
				l.Problems = append(l.Problems, "receipt "+lr.ID+" does not verify")
			}
		}
		l.Complete = len(l.Problems) == 0
		out = append(out, l)
	}
	return out, nil
}

func (r *replayer) lineageReceipt(rc Receipt) LineageReceipt {
	lr := LineageReceipt{ID: rc.ID, Seq: rc.Seq, Actor: rc.Actor, Action: rc.Action, At: rc.CreatedAt}
	if env, err := events.ParseEnvelope(rc.Envelope); err == nil && env.Verify(r.cfg.Keys) == nil {
		lr.Verified = true
	}
	return lr
}
