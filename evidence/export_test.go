package evidence

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// PutTxCopy is the alternative batch path BenchmarkPutTx compares PutTx
// with: COPY into a session temp table, then INSERT … SELECT … ON CONFLICT
// DO NOTHING. It was measured slower than the single unnest INSERT (see
// bench/README.md) and lives here only for that comparison.
func (s *Store) PutTxCopy(ctx context.Context, tx pgx.Tx, blobs [][]byte) error {
	r, err := s.prepare(blobs)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS evidence_stage (
		ord int, hash bytea, raw_size int, data bytea) ON COMMIT DELETE ROWS`); err != nil {
		return err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"evidence_stage"}, []string{"ord", "hash", "raw_size", "data"},
		pgx.CopyFromSlice(len(r.hashes), func(i int) ([]any, error) {
			return []any{int32(i), r.hashes[i], r.raw[i], r.data[i]}, nil
		})); err != nil {
		return err
	}
	var n, raw int64
	if err := tx.QueryRow(ctx, `WITH ins AS (
		INSERT INTO evidence_loose (hash, raw_size, stored_size, data)
		SELECT b.hash, b.raw_size, octet_length(b.data), b.data FROM evidence_stage b
		WHERE NOT EXISTS (SELECT 1 FROM evidence_packed p WHERE p.hash = b.hash)
		ORDER BY b.ord
		ON CONFLICT (hash) DO NOTHING
		RETURNING raw_size)
	SELECT count(*), coalesce(sum(raw_size), 0)::bigint FROM ins`, pgx.QueryExecModeExec).Scan(&n, &raw); err != nil {
		return err
	}
	// No TRUNCATE: ON COMMIT DELETE ROWS empties the stage at commit, and a
	// second call in one transaction re-offers rows that now conflict.
	return nil
}

// Prepare exposes the CPU part of PutTx (hash, sort, compress) to benchmarks.
func (s *Store) Prepare(blobs [][]byte) error {
	_, err := s.prepare(blobs)
	return err
}

// PutTxMode is PutTx with another pgx query mode, for BenchmarkPutTx.
func (s *Store) PutTxMode(ctx context.Context, tx pgx.Tx, blobs [][]byte, mode pgx.QueryExecMode) error {
	r, err := s.prepare(blobs)
	if err != nil {
		return err
	}
	var n, raw int64
	return tx.QueryRow(ctx, insertSQL, mode, r.hashes, r.raw, r.data).Scan(&n, &raw)
}
