package evidence

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
)

// Compaction defaults and limits.
const (
	// DefaultMaxBlobSize is CompactOptions.MaxBlobSize when unset.
	DefaultMaxBlobSize = 64 << 10
	// DefaultPackTarget is CompactOptions.PackTarget when unset.
	DefaultPackTarget = 4 << 20
	// MaxPackTarget is the largest CompactOptions.PackTarget and MaxBlobSize
	// accepted. A pack holds less than PackTarget + MaxBlobSize raw bytes,
	// which stays below what readers decompress (MaxBlobBytes).
	MaxPackTarget = 64 << 20

	// packLevel trades pack CPU for ratio; packs are written off the hot
	// path and read through a cache.
	packLevel = zstd.SpeedBetterCompression
	// fetchMin and fetchMax bound the loose rows read per query while a
	// pack fills up.
	fetchMin, fetchMax = 64, 4096
)

// CompactOptions tunes Compact. The zero value means the defaults.
type CompactOptions struct {
	// MaxBlobSize: loose blobs of at most this many raw bytes are packed;
	// larger ones stay loose, where Get reads them without decompressing a
	// whole pack (optional; default DefaultMaxBlobSize, at most
	// MaxPackTarget).
	MaxBlobSize int
	// PackTarget: a pack is closed once it holds this many raw bytes
	// (optional; default DefaultPackTarget, at most MaxPackTarget). Larger
	// packs compress a little better; every cold Get of a packed blob
	// decompresses its whole pack.
	PackTarget int
}

func (o *CompactOptions) defaults() error {
	var errs []error
	if o.MaxBlobSize < 0 || o.MaxBlobSize > MaxPackTarget {
		errs = append(errs, fmt.Errorf("evidence: MaxBlobSize %d is outside 0..%d", o.MaxBlobSize, MaxPackTarget))
	}
	if o.PackTarget < 0 || o.PackTarget > MaxPackTarget {
		errs = append(errs, fmt.Errorf("evidence: PackTarget %d is outside 0..%d", o.PackTarget, MaxPackTarget))
	}
	if o.MaxBlobSize == 0 {
		o.MaxBlobSize = DefaultMaxBlobSize
	}
	if o.PackTarget == 0 {
		o.PackTarget = DefaultPackTarget
	}
	return errors.Join(errs...)
}

// CompactReport says what one Compact run did. Byte counts cover only the
// blobs this run packed.
type CompactReport struct {
	Packs       int   `json:"packs"`        // packs written
	BlobsPacked int64 `json:"blobs_packed"` // loose blobs moved into them
	// DuplicatesDropped counts loose copies of blobs that were already
	// packed (left by a Put racing an earlier compaction), now deleted.
	DuplicatesDropped int64 `json:"duplicates_dropped"`
	// CorruptSkipped counts loose blobs left in place because they failed
	// verification; Get reports them as ErrCorrupt.
	CorruptSkipped int64 `json:"corrupt_skipped"`
	// RawBytes is the uncompressed size of the packed blobs, LooseBytes what
	// their loose zstd frames took, PackedBytes what the new packs take.
	RawBytes    int64 `json:"raw_bytes"`
	LooseBytes  int64 `json:"loose_bytes"`
	PackedBytes int64 `json:"packed_bytes"`
	// ReductionPct is 100 × (1 − PackedBytes/RawBytes): the size saved
	// relative to the raw evidence. ReductionVsLoosePct is the same
	// relative to the loose frames the packs replaced.
	ReductionPct        float64       `json:"reduction_pct"`
	ReductionVsLoosePct float64       `json:"reduction_vs_loose_pct"`
	Duration            time.Duration `json:"duration_ns"`
}

// Compact moves small loose blobs into packs: one zstd frame over the
// concatenated raw blobs, with evidence_packed mapping each hash to its byte
// range. Each pack is written, and its loose rows deleted, in one
// transaction, so a failed or cancelled run loses nothing and leaves only
// whole packs behind; the report then covers the packs committed so far.
//
// It is safe to run while Puts happen and from several processes at once:
// loose rows are locked as they are read (SKIP LOCKED, so concurrent
// compactions take disjoint blobs). A Put of a blob that is being packed
// waits for the pack's transaction; it may then store a second, identical
// loose copy, which readers accept and the next run drops (counted in
// DuplicatesDropped). No interleaving loses a blob. Running Compact again
// with nothing new to pack does nothing. Every blob is verified before it is
// packed; one that fails stays loose and is counted in CorruptSkipped.
func (s *Store) Compact(ctx context.Context, opts CompactOptions) (CompactReport, error) {
	start := time.Now()
	rep, err := s.compact(ctx, opts)
	rep.Duration = time.Since(start)
	if rep.RawBytes > 0 {
		rep.ReductionPct = 100 * (1 - float64(rep.PackedBytes)/float64(rep.RawBytes))
	}
	if rep.LooseBytes > 0 {
		rep.ReductionVsLoosePct = 100 * (1 - float64(rep.PackedBytes)/float64(rep.LooseBytes))
	}
	result := "ok"
	if err != nil {
		result = "error"
		err = fmt.Errorf("evidence: compact: %w", err)
	}
	s.m.compactionRuns.WithLabelValues(result).Inc()
	return rep, err
}

func (s *Store) compact(ctx context.Context, opts CompactOptions) (CompactReport, error) {
	var rep CompactReport
	if err := opts.defaults(); err != nil {
		return rep, err
	}
	// Loose rows are visited once per run in hash order; after is the last
	// hash read, so rows skipped (locked, corrupt, too big) are not re-read.
	after := []byte{}
	for {
		var p packResult
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			p, err = s.compactOne(ctx, tx, opts, after)
			return err
		})
		if err != nil {
			return rep, err
		}
		// Count only what committed.
		if p.blobs > 0 {
			rep.Packs++
		}
		rep.BlobsPacked += p.blobs
		rep.DuplicatesDropped += p.duplicates
		rep.CorruptSkipped += p.corrupt
		rep.RawBytes += p.raw
		rep.LooseBytes += p.loose
		rep.PackedBytes += p.packed
		after = p.last
		if p.exhausted {
			return rep, nil
		}
	}
}

// packResult is what one compaction transaction did.
type packResult struct {
	blobs, duplicates, corrupt int64
	raw, loose, packed         int64
	last                       []byte // last hash read
	exhausted                  bool   // no loose candidates after last
}

// fetchSQL reads the next loose candidates after a hash and locks them.
// SKIP LOCKED leaves rows to a concurrent compaction (or Delete) instead of
// waiting; rows just inserted by uncommitted Puts are not visible anyway.
const fetchSQL = `
SELECT hash, raw_size, stored_size, data
FROM evidence_loose
WHERE hash > $1 AND raw_size <= $2
ORDER BY hash
LIMIT $3
FOR UPDATE SKIP LOCKED`

// packedSQL finds which of a list of hashes are already packed: one index
// probe each, whatever the size of evidence_packed. (A join in fetchSQL let
// the planner merge-scan the whole packed index from its start.)
const packedSQL = `SELECT hash FROM evidence_packed WHERE hash = ANY($1::bytea[])`

// compactOne fills one pack of about opts.PackTarget raw bytes from the
// loose rows after `after`, and writes it.
func (s *Store) compactOne(ctx context.Context, tx pgx.Tx, opts CompactOptions, after []byte) (packResult, error) {
	res := packResult{last: after}
	var (
		pack    = make([]byte, 0, opts.PackTarget+opts.MaxBlobSize)
		hashes  [][]byte // packed, in pack order
		offsets []int32
		sizes   []int32
		remove  [][]byte // loose rows to delete: packed and duplicates
	)
	avg := 256 // running estimate of raw bytes per blob, to size fetches
	for len(pack) < opts.PackTarget {
		limit := min(max((opts.PackTarget-len(pack))/avg+1, fetchMin), fetchMax)
		cands, err := fetchLoose(ctx, tx, res.last, opts.MaxBlobSize, limit)
		if err != nil {
			return res, err
		}
		packed, err := alreadyPacked(ctx, tx, cands)
		if err != nil {
			return res, err
		}
		for i, c := range cands {
			if len(pack) >= opts.PackTarget {
				// Full: the rest of this fetch starts the next pack (our
				// locks on it end with this transaction).
				cands = cands[:i]
				break
			}
			res.last = c.hash
			if packed[[32]byte(c.hash)] {
				remove = append(remove, c.hash)
				res.duplicates++
				continue
			}
			b, err := s.decode(c.frame, int(c.raw))
			if err == nil && sha256.Sum256(b) != [32]byte(c.hash) {
				err = ErrCorrupt
			}
			if err != nil {
				res.corrupt++
				continue
			}
			hashes = append(hashes, c.hash)
			offsets = append(offsets, int32(len(pack)))
			sizes = append(sizes, c.raw)
			pack = append(pack, b...)
			remove = append(remove, c.hash)
			res.loose += int64(c.stored)
		}
		if len(cands) < limit && len(pack) < opts.PackTarget {
			res.exhausted = true
			break
		}
		if len(hashes) > 0 {
			avg = max(len(pack)/len(hashes), 1)
		}
	}
	if len(hashes) > 0 {
		frame := s.packEnc.EncodeAll(pack, make([]byte, 0, len(pack)/4))
		var packID int32
		err := tx.QueryRow(ctx, `INSERT INTO evidence_packs (blob_count, raw_size, stored_size, data)
			VALUES ($1, $2, $3, $4) RETURNING pack_id`, len(hashes), len(pack), len(frame), frame).Scan(&packID)
		if err != nil {
			return res, err
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"evidence_packed"}, []string{"hash", "pack_id", "pack_offset", "raw_size"},
			pgx.CopyFromSlice(len(hashes), func(i int) ([]any, error) {
				return []any{hashes[i], packID, offsets[i], sizes[i]}, nil
			}))
		if err != nil {
			return res, err
		}
		res.blobs, res.raw, res.packed = int64(len(hashes)), int64(len(pack)), int64(len(frame))
	}
	if len(remove) > 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM evidence_loose WHERE hash = ANY($1::bytea[])", customPlan, remove); err != nil {
			return res, err
		}
	}
	return res, nil
}

// loose is a candidate row of fetchSQL.
type loose struct {
	hash        []byte
	raw, stored int32
	frame       []byte
}

func fetchLoose(ctx context.Context, tx pgx.Tx, after []byte, maxBlob, limit int) ([]loose, error) {
	rows, err := tx.Query(ctx, fetchSQL, customPlan, after, maxBlob, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (loose, error) {
		var l loose
		err := row.Scan(&l.hash, &l.raw, &l.stored, &l.frame)
		return l, err
	})
}

func alreadyPacked(ctx context.Context, tx pgx.Tx, cands []loose) (map[[32]byte]bool, error) {
	if len(cands) == 0 {
		return nil, nil
	}
	hashes := make([][]byte, len(cands))
	for i, c := range cands {
		hashes[i] = c.hash
	}
	rows, err := tx.Query(ctx, packedSQL, customPlan, hashes)
	if err != nil {
		return nil, err
	}
	found := map[[32]byte]bool{}
	var h []byte
	_, err = pgx.ForEachRow(rows, []any{&h}, func() error {
		found[[32]byte(h)] = true
		return nil
	})
	return found, err
}
