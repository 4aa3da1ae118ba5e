package audittest

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/ledger"
)

// LoadConfig configures Load.
type LoadConfig struct {
	Pool   *pgxpool.Pool  // migrated ledger database (required)
	Ledger *ledger.Ledger // signs the checkpoints (required)
	Chain  *Chain         // generates the receipts; continues where it stands (required)
	// Receipts to append (required).
	Receipts int
	// CheckpointEvery signs a checkpoint after every so many receipts, and
	// always after the last (optional, default: only after the last).
	CheckpointEvery int
	// Workers signing in parallel (optional, default 1).
	Workers int
	// Progress is called after each committed chunk (optional).
	Progress func(done int)
}

// Load appends generated receipts to the ledger tables the way the ledger
// projector writes them — receipts, Merkle stored hashes, tenant head — with
// COPY, so a million receipts load in about a minute instead of going
// through Kafka. It assumes it is the only writer of Chain.Tenant. Tests of
// the projection path itself must use the projector.
func Load(ctx context.Context, cfg LoadConfig) error {
	c := cfg.Chain
	workers := max(cfg.Workers, 1)
	every := cfg.CheckpointEvery
	if every <= 0 {
		every = cfg.Receipts
	}
	start := int64(c.Head().Seq)
	stored, err := storedHashes(ctx, cfg.Pool, c.Tenant, start)
	if err != nil {
		return err
	}
	read := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x >= int64(len(stored)) {
				return nil, fmt.Errorf("audittest: stored hash %d missing", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	const chunk = 10000
	type item struct {
		r        events.Receipt
		payload  []byte
		envelope []byte
	}
	items := make([]item, 0, chunk)
	for done := 0; done < cfg.Receipts; {
		n := min(chunk, cfg.Receipts-done, every-done%every)
		items = items[:0]
		for range n {
			r := c.Receipt()
			payload, err := events.MarshalReceipt(r)
			if err != nil {
				return err
			}
			if err := c.Append(r, payload); err != nil {
				return err
			}
			items = append(items, item{r: r, payload: payload})
		}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(items); i += workers {
					items[i].envelope, _ = c.Signer.Sign(items[i].payload).Marshal()
				}
			}()
		}
		wg.Wait()
		var hashRows [][]any
		for _, it := range items {
			hs, err := tlog.StoredHashes(int64(it.r.Seq-1), it.payload, read)
			if err != nil {
				return fmt.Errorf("audittest: %w", err)
			}
			for _, h := range hs {
				hashRows = append(hashRows, []any{c.Tenant, int64(len(stored)), h[:]})
				stored = append(stored, h)
			}
		}
		if err := commit(ctx, cfg.Pool, c, len(items), func(i int) []any {
			r := &items[i].r
			return []any{r.ID, r.Tenant, int64(r.Seq), r.Action, r.Actor, r.Decision, r.PolicyVersion, r.EvidenceHash, r.CreatedAt,
				r.PrevHash, events.HashPayload(items[i].payload), items[i].envelope, int32(0), int64(r.Seq - 1), r.CommandID, r.Subject}
		}, hashRows); err != nil {
			return err
		}
		done += n
		if done%every == 0 || done == cfg.Receipts {
			if _, err := cfg.Ledger.Checkpoint(ctx, c.Tenant); err != nil {
				return fmt.Errorf("audittest: %w", err)
			}
		}
		if cfg.Progress != nil {
			cfg.Progress(done)
		}
	}
	return nil
}

func commit(ctx context.Context, pool *pgxpool.Pool, c *Chain, n int, row func(int) []any, hashRows [][]any) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("audittest: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"receipts"}, []string{"id", "tenant", "seq", "action", "actor", "decision", "policy_version",
		"evidence_hash", "created_at", "prev_hash", "payload_hash", "envelope", "kafka_partition", "kafka_offset", "command_id", "subject"},
		pgx.CopyFromSlice(n, func(i int) ([]any, error) { return row(i), nil })); err != nil {
		return fmt.Errorf("audittest: copy receipts: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"merkle_hashes"}, []string{"tenant", "idx", "hash"}, pgx.CopyFromRows(hashRows)); err != nil {
		return fmt.Errorf("audittest: copy hashes: %w", err)
	}
	head := c.Head()
	if _, err := tx.Exec(ctx, `INSERT INTO tenant_heads (tenant, seq, head_hash, tree_size) VALUES ($1, $2, $3, $2)
		ON CONFLICT (tenant) DO UPDATE SET seq = EXCLUDED.seq, head_hash = EXCLUDED.head_hash, tree_size = EXCLUDED.tree_size`,
		c.Tenant, int64(head.Seq), head.Head); err != nil {
		return fmt.Errorf("audittest: head: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("audittest: %w", err)
	}
	return nil
}

// storedHashes reads tenant's stored hashes of a tree of n leaves.
func storedHashes(ctx context.Context, pool *pgxpool.Pool, tenant string, n int64) ([]tlog.Hash, error) {
	count := tlog.StoredHashCount(n)
	out := make([]tlog.Hash, count)
	if count == 0 {
		return out, nil
	}
	rows, err := pool.Query(ctx, "SELECT idx, hash FROM merkle_hashes WHERE tenant = $1 AND idx < $2", tenant, count)
	if err != nil {
		return nil, fmt.Errorf("audittest: stored hashes: %w", err)
	}
	defer rows.Close()
	var got int64
	for rows.Next() {
		var idx int64
		var h []byte
		if err := rows.Scan(&idx, &h); err != nil {
			return nil, fmt.Errorf("audittest: stored hashes: %w", err)
		}
		copy(out[idx][:], h)
		got++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audittest: stored hashes: %w", err)
	}
	if got != count {
		return nil, fmt.Errorf("audittest: tenant %s has %d stored hashes, want %d", tenant, got, count)
	}
	return out, nil
}
