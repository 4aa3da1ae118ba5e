package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/mod/sumdb/tlog"
)

// Read-only helpers for exports (package audit): one consistent snapshot of
// a tenant's receipts, checkpoints and stored hashes, streamed without
// materialising the range in memory.

// ReceiptSeqRange returns the smallest and largest seq, and the count, of
// tenant's receipts with created_at in [from, to). ok is false when there
// are none. created_at need not grow with seq, so the range is what an
// export must cover contiguously; it may hold receipts outside [from, to).
func (l *Ledger) ReceiptSeqRange(ctx context.Context, tenant string, from, to time.Time) (first, last, n int64, ok bool, err error) {
	var lo, hi *int64
	err = l.pool.QueryRow(ctx, `SELECT min(seq), max(seq), count(*) FROM receipts WHERE tenant = $1 AND created_at >= $2 AND created_at < $3`,
		tenant, from, to).Scan(&lo, &hi, &n)
	if err != nil {
		return 0, 0, 0, false, fmt.Errorf("ledger: receipt range of %s: %w", tenant, err)
	}
	if lo == nil || hi == nil {
		return 0, 0, 0, false, nil
	}
	return *lo, *hi, n, true, nil
}

// Snapshot is a read-only REPEATABLE READ view of one tenant's ledger: every
// read through it sees the same committed state. Close it when done.
type Snapshot struct {
	tx     pgx.Tx
	tenant string
}

// Snapshot begins a read-only snapshot of tenant.
func (l *Ledger) Snapshot(ctx context.Context, tenant string) (*Snapshot, error) {
	tx, err := l.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("ledger: snapshot of %s: %w", tenant, err)
	}
	return &Snapshot{tx: tx, tenant: tenant}, nil
}

// Close ends the snapshot.
func (s *Snapshot) Close(ctx context.Context) error {
	if err := s.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("ledger: close snapshot: %w", err)
	}
	return nil
}

// Checkpoints returns the stored checkpoints with minSize ≤ tree_size ≤
// maxSize, smallest first.
func (s *Snapshot) Checkpoints(ctx context.Context, minSize, maxSize int64) ([]Checkpoint, error) {
	rows, err := s.tx.Query(ctx, `SELECT tree_size, root_hash, note, created_at FROM checkpoints
		WHERE tenant = $1 AND tree_size BETWEEN $2 AND $3 ORDER BY tree_size`, s.tenant, minSize, maxSize)
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoints of %s: %w", s.tenant, err)
	}
	defer rows.Close()
	var out []Checkpoint
	for rows.Next() {
		c := Checkpoint{Tenant: s.tenant}
		var root []byte
		if err := rows.Scan(&c.TreeSize, &root, &c.Note, &c.CreatedAt); err != nil {
			return nil, fmt.Errorf("ledger: checkpoints of %s: %w", s.tenant, err)
		}
		if len(root) != tlog.HashSize {
			return nil, fmt.Errorf("ledger: checkpoint %s/%d: root has %d bytes", s.tenant, c.TreeSize, len(root))
		}
		c.RootHash = tlog.Hash(root)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger: checkpoints of %s: %w", s.tenant, err)
	}
	return out, nil
}

// LatestCheckpoint returns the largest checkpoint in the snapshot, or ErrNotFound.
func (s *Snapshot) LatestCheckpoint(ctx context.Context) (Checkpoint, error) {
	cs, err := s.Checkpoints(ctx, 1, 1<<62)
	if err != nil {
		return Checkpoint{}, err
	}
	if len(cs) == 0 {
		return Checkpoint{}, fmt.Errorf("%w: no checkpoint for tenant %s", ErrNotFound, s.tenant)
	}
	return cs[len(cs)-1], nil
}

// StoredHashes reads the stored hashes at indexes (tlog.StoredHashIndex) in
// as few queries as possible; every index must exist.
func (s *Snapshot) StoredHashes(ctx context.Context, indexes []int64) (map[int64]tlog.Hash, error) {
	out := make(map[int64]tlog.Hash, len(indexes))
	const chunk = 10000
	for len(indexes) > 0 {
		n := min(chunk, len(indexes))
		m, err := readHashes(ctx, s.tx, s.tenant, indexes[:n])
		if err != nil {
			return nil, fmt.Errorf("ledger: stored hashes of %s: %w", s.tenant, err)
		}
		for _, idx := range indexes[:n] {
			h, ok := m[idx]
			if !ok {
				return nil, fmt.Errorf("ledger: tenant %s: stored hash %d missing", s.tenant, idx)
			}
			out[idx] = h
		}
		indexes = indexes[n:]
	}
	return out, nil
}

// ExportRow is one receipt as ScanReceipts yields it. Envelope aliases the
// driver's buffer: it is valid only during the callback.
type ExportRow struct {
	Seq           int64
	ID            string
	CreatedAt     time.Time
	PolicyVersion string
	EvidenceHash  string
	Subject       string
	Envelope      []byte
}

// ScanReceipts calls fn for every receipt with first ≤ seq ≤ last, in seq
// order, from one streaming query. It fails if a seq is missing.
func (s *Snapshot) ScanReceipts(ctx context.Context, first, last int64, fn func(*ExportRow) error) error {
	rows, err := s.tx.Query(ctx, `SELECT seq, id, created_at, policy_version, evidence_hash, subject, envelope FROM receipts
		WHERE tenant = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq`, s.tenant, first, last)
	if err != nil {
		return fmt.Errorf("ledger: scan receipts of %s: %w", s.tenant, err)
	}
	defer rows.Close()
	var r ExportRow
	var env pgtype.DriverBytes
	want := first
	for rows.Next() {
		if err := rows.Scan(&r.Seq, &r.ID, &r.CreatedAt, &r.PolicyVersion, &r.EvidenceHash, &r.Subject, &env); err != nil {
			return fmt.Errorf("ledger: scan receipts of %s: %w", s.tenant, err)
		}
		if r.Seq != want {
			return fmt.Errorf("ledger: scan receipts of %s: seq %d where %d was expected", s.tenant, r.Seq, want)
		}
		want++
		r.Envelope = env
		if err := fn(&r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: scan receipts of %s: %w", s.tenant, err)
	}
	if want != last+1 {
		return fmt.Errorf("ledger: scan receipts of %s: stopped at seq %d, want %d", s.tenant, want-1, last)
	}
	return nil
}
