package evidence

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Errors returned (wrapped, after "evidence: <operation> <hash>: ") by Store
// methods; test for them with errors.Is.
var (
	// ErrNotFound: no blob with that hash is stored.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt: stored bytes do not decompress, or do not hash to their
	// key. The row is left as found, for an operator to inspect.
	ErrCorrupt = errors.New("stored bytes are corrupt")
	// ErrInvalidHash: a hash is not "sha256:" followed by 64 lowercase hex digits.
	ErrInvalidHash = errors.New("invalid hash")
	// ErrTooLarge: a blob is larger than MaxBlobBytes.
	ErrTooLarge = errors.New("blob too large")
)

const (
	hashPrefix = "sha256:"

	// DefaultPackCacheBytes is Config.PackCacheBytes when unset.
	DefaultPackCacheBytes = 32 << 20
	// MaxBlobBytes is the largest blob Put accepts. It also bounds what a
	// reader decompresses, so a damaged size or frame cannot make it
	// allocate without limit.
	MaxBlobBytes = 256 << 20
	// maxPackRaw bounds an uncompressed pack (CompactOptions.PackTarget is
	// limited to well below it).
	maxPackRaw = MaxBlobBytes
	// getRetries bounds how often Get starts over after a pack was
	// rewritten under it (a concurrent Delete in the same pack).
	getRetries = 5
	// deleteRetries bounds how often Delete starts over after the blob was
	// deleted by someone else between its reads.
	deleteRetries = 5
)

// Hash returns the key of data: "sha256:" + hex(SHA-256(data)), the same
// string as events.EvidenceHash(data).
func Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return formatDigest(sum[:])
}

// ParseHash checks that s is a key as Hash returns it and returns its digest.
func ParseHash(s string) ([32]byte, error) {
	var d [32]byte
	hexPart, ok := strings.CutPrefix(s, hashPrefix)
	// Only lowercase hex: one blob must have exactly one key string.
	if !ok || len(hexPart) != 64 || strings.ToLower(hexPart) != hexPart {
		return d, fmt.Errorf("evidence: %w %q", ErrInvalidHash, s)
	}
	if _, err := hex.Decode(d[:], []byte(hexPart)); err != nil {
		return d, fmt.Errorf("evidence: %w %q", ErrInvalidHash, s)
	}
	return d, nil
}

func formatDigest(d []byte) string { return hashPrefix + hex.EncodeToString(d) }

// Config configures a Store.
type Config struct {
	// Pool is the Postgres pool holding the evidence tables (required).
	// Migrations must have been applied (projections/ledger.Migrate).
	Pool *pgxpool.Pool
	// Registerer receives the store's metrics (optional; nil = not exported).
	Registerer prometheus.Registerer
	// PackCacheBytes bounds the decompressed packs kept in memory for Get
	// (optional; default DefaultPackCacheBytes; negative disables the cache).
	PackCacheBytes int64
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Pool == nil {
		errs = append(errs, errors.New("evidence: Config.Pool is required"))
	}
	return errors.Join(errs...)
}

// Store is the evidence store. It is safe for concurrent use, also by
// several processes on one database.
type Store struct {
	pool *pgxpool.Pool
	// looseEnc compresses single blobs on the write path: fastest level and
	// no frame checksum, since every read verifies the SHA-256 anyway.
	looseEnc *zstd.Encoder
	// packEnc compresses packs, off the hot path: better ratio, and a frame
	// checksum to tell a damaged pack from a damaged index.
	packEnc *zstd.Encoder
	dec     *zstd.Decoder
	packs   *packCache
	loads   singleflight.Group
	m       *metrics
}

// New returns a Store for cfg.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	looseEnc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("evidence: zstd encoder: %w", err)
	}
	packEnc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(packLevel))
	if err != nil {
		return nil, fmt.Errorf("evidence: zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxMemory(maxPackRaw))
	if err != nil {
		return nil, fmt.Errorf("evidence: zstd decoder: %w", err)
	}
	cacheBytes := cfg.PackCacheBytes
	if cacheBytes == 0 {
		cacheBytes = DefaultPackCacheBytes
	}
	return &Store{pool: cfg.Pool, looseEnc: looseEnc, packEnc: packEnc, dec: dec,
		packs: newPackCache(max(cacheBytes, 0)), m: m}, nil
}

// Close releases the compressors. It does not close the pool.
func (s *Store) Close() {
	_ = s.looseEnc.Close()
	_ = s.packEnc.Close()
	s.dec.Close()
}

// Put stores data in its own transaction and returns its hash. Storing bytes
// that are already stored (loose or packed) is a no-op.
func (s *Store) Put(ctx context.Context, data []byte) (string, error) {
	rows, err := s.prepare([][]byte{data})
	if err != nil {
		return "", fmt.Errorf("evidence: put: %w", err)
	}
	if err := s.insert(ctx, s.pool, rows); err != nil {
		return "", fmt.Errorf("evidence: put: %w", err)
	}
	return formatDigest(rows.hashes[0]), nil
}

// PutTx stores blobs inside the caller's transaction (the ledger projector's),
// so they commit or roll back with it. Blobs already stored, and repeats
// within blobs, are skipped. It is one statement whatever len(blobs) is.
//
// Blobs are inserted in hash order, so concurrent transactions storing
// overlapping sets wait for each other instead of deadlocking. A blob that a
// concurrent, uncommitted transaction is storing or compacting makes PutTx
// wait for that transaction. Metrics count the rows when the statement runs,
// even if tx later rolls back.
func (s *Store) PutTx(ctx context.Context, tx pgx.Tx, blobs [][]byte) error {
	if len(blobs) == 0 {
		return nil
	}
	rows, err := s.prepare(blobs)
	if err != nil {
		return fmt.Errorf("evidence: put batch: %w", err)
	}
	if err := s.insert(ctx, tx, rows); err != nil {
		return fmt.Errorf("evidence: put batch: %w", err)
	}
	return nil
}

// looseRows holds a batch to insert, as the arrays the INSERT unnests.
type looseRows struct {
	hashes [][]byte
	raw    []int32
	data   [][]byte
}

// prepare hashes and compresses blobs, sorted by hash without repeats.
func (s *Store) prepare(blobs [][]byte) (looseRows, error) {
	type item struct {
		sum  [32]byte
		blob []byte
	}
	items := make([]item, len(blobs))
	for i, b := range blobs {
		if len(b) > MaxBlobBytes {
			return looseRows{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxBlobBytes)
		}
		items[i] = item{sha256.Sum256(b), b}
	}
	slices.SortFunc(items, func(a, b item) int { return bytes.Compare(a.sum[:], b.sum[:]) })
	items = slices.CompactFunc(items, func(a, b item) bool { return a.sum == b.sum })
	r := looseRows{hashes: make([][]byte, len(items)), raw: make([]int32, len(items)), data: make([][]byte, len(items))}
	for i := range items {
		r.hashes[i] = items[i].sum[:]
		r.raw[i] = int32(len(items[i].blob))
		r.data[i] = s.looseEnc.EncodeAll(items[i].blob, make([]byte, 0, len(items[i].blob)+16))
	}
	return r, nil
}

// customPlan makes pgx send a statement unnamed, so Postgres plans it for
// the actual arguments and current table sizes every time. The statements
// using it run once per batch or pack (planning is noise) and touch tables
// that grow from empty: a cached generic plan made while evidence_packed was
// empty kept seq-scanning it per row once it had 100k rows (seen: 24 s for
// one fetch during compaction). DescribeExec rather than Exec: Exec sends
// parameters in text format, hex-encoding every bytea (measured ~1.6× slower
// PutTx at 5,000 blobs); Describe learns the types so they go binary, for
// one extra round trip per statement.
const customPlan = pgx.QueryExecModeDescribeExec

// querier is what insert needs from a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// insertSQL stores the loose rows that are neither loose nor packed yet.
// WITH ORDINALITY + ORDER BY keep the caller's (hash) order, which is the
// lock order. The CTE returns what was really inserted, for the metrics.
const insertSQL = `
WITH ins AS (
	INSERT INTO evidence_loose (hash, raw_size, stored_size, data)
	SELECT b.hash, b.raw_size, octet_length(b.data), b.data
	FROM unnest($1::bytea[], $2::int[], $3::bytea[]) WITH ORDINALITY AS b (hash, raw_size, data, ord)
	WHERE NOT EXISTS (SELECT 1 FROM evidence_packed p WHERE p.hash = b.hash)
	ORDER BY b.ord
	ON CONFLICT (hash) DO NOTHING
	RETURNING raw_size)
SELECT count(*), coalesce(sum(raw_size), 0)::bigint FROM ins`

func (s *Store) insert(ctx context.Context, q querier, r looseRows) error {
	var n, raw int64
	if err := q.QueryRow(ctx, insertSQL, customPlan, r.hashes, r.raw, r.data).Scan(&n, &raw); err != nil {
		return err
	}
	s.m.blobsWritten.Add(float64(n))
	s.m.bytesRaw.Add(float64(raw))
	return nil
}

// getSQL finds a blob wherever it is, in one snapshot: loose (data), or
// packed (its range, and the generation of its pack for the cache key).
const getSQL = `
SELECT l.raw_size, l.data, p.pack_id, p.pack_offset, p.raw_size, k.generation
FROM (SELECT $1::bytea AS hash) q
LEFT JOIN evidence_loose l ON l.hash = q.hash
LEFT JOIN evidence_packed p ON p.hash = q.hash
LEFT JOIN evidence_packs k ON k.pack_id = p.pack_id`

// errRetryGet: the pack changed between reading the index and the pack, or
// a load shared with a cancelled caller failed; Get starts over.
var errRetryGet = errors.New("pack rewritten concurrently, retries exhausted")

// Get returns the bytes stored under hash, after checking that they hash to
// it. It returns ErrNotFound when hash is not stored and ErrCorrupt when the
// stored bytes are damaged. The caller may modify the returned slice.
func (s *Store) Get(ctx context.Context, hash string) ([]byte, error) {
	digest, err := ParseHash(hash)
	if err != nil {
		return nil, err
	}
	for range getRetries {
		b, err := s.get(ctx, digest)
		if errors.Is(err, errRetryGet) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("evidence: get %s: %w", hash, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("evidence: get %s: %w", hash, errRetryGet)
}

func (s *Store) get(ctx context.Context, digest [32]byte) ([]byte, error) {
	var (
		looseRaw, packOff, packedRaw, gen *int32
		looseData                         []byte
		packID                            *int32
	)
	if err := s.pool.QueryRow(ctx, getSQL, digest[:]).Scan(&looseRaw, &looseData, &packID, &packOff, &packedRaw, &gen); err != nil {
		return nil, err
	}
	switch {
	case looseData != nil:
		b, err := s.decode(looseData, int(*looseRaw))
		if err != nil {
			return nil, err
		}
		return b, verify(digest, b)
	case packID != nil:
		if gen == nil {
			return nil, fmt.Errorf("%w: pack %d is missing", ErrCorrupt, *packID)
		}
		pack, err := s.loadPack(ctx, *packID, *gen)
		if err != nil {
			return nil, err
		}
		off, n := int(*packOff), int(*packedRaw)
		if off+n > len(pack) {
			return nil, fmt.Errorf("%w: range %d+%d outside pack %d (%d bytes)", ErrCorrupt, off, n, *packID, len(pack))
		}
		b := bytes.Clone(pack[off : off+n])
		return b, verify(digest, b)
	default:
		return nil, ErrNotFound
	}
}

// decode decompresses one zstd frame that must hold exactly raw bytes.
func (s *Store) decode(frame []byte, raw int) ([]byte, error) {
	if raw < 0 || raw > maxPackRaw {
		return nil, fmt.Errorf("%w: raw size %d", ErrCorrupt, raw)
	}
	// Cap raw (+1 to notice a longer frame): with WithDecodeAllCapLimit a
	// damaged frame cannot inflate past it.
	b, err := s.dec.DecodeAll(frame, make([]byte, 0, raw+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if len(b) != raw {
		return nil, fmt.Errorf("%w: %d bytes decompressed, want %d", ErrCorrupt, len(b), raw)
	}
	return b, nil
}

func verify(digest [32]byte, b []byte) error {
	if sha256.Sum256(b) != digest {
		return fmt.Errorf("%w: content hashes to %s", ErrCorrupt, Hash(b))
	}
	return nil
}

// loadPack returns the decompressed pack (id, gen), from the cache or from
// Postgres; concurrent loads of one pack share a single query. The result
// is shared: callers must not modify it.
func (s *Store) loadPack(ctx context.Context, id, gen int32) ([]byte, error) {
	key := packKey{id, gen}
	if b, ok := s.packs.get(key); ok {
		return b, nil
	}
	v, err, _ := s.loads.Do(fmt.Sprintf("%d/%d", id, gen), func() (any, error) {
		var raw int64
		var frame []byte
		err := s.pool.QueryRow(ctx, "SELECT raw_size, data FROM evidence_packs WHERE pack_id = $1 AND generation = $2", id, gen).Scan(&raw, &frame)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, errRetryGet
		}
		if err != nil {
			return nil, err
		}
		b, err := s.decode(frame, int(raw))
		if err != nil {
			return nil, fmt.Errorf("pack %d: %w", id, err)
		}
		s.packs.add(key, b)
		return b, nil
	})
	if err != nil {
		if ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			return nil, errRetryGet // the load ran under another caller's context
		}
		return nil, err
	}
	return v.([]byte), nil
}

// Has reports whether hash is stored. It does not read or verify the bytes.
func (s *Store) Has(ctx context.Context, hash string) (bool, error) {
	digest, err := ParseHash(hash)
	if err != nil {
		return false, err
	}
	var ok bool
	err = s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM evidence_loose WHERE hash = $1)
		OR EXISTS (SELECT 1 FROM evidence_packed WHERE hash = $1)`, digest[:]).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("evidence: has %s: %w", hash, err)
	}
	return ok, nil
}

// errRetryDelete: the blob was deleted by someone else between Delete's
// reads; Delete looks again.
var errRetryDelete = errors.New("blob moved concurrently, retries exhausted")

// Delete removes the blob stored under hash, loose or packed, and returns
// ErrNotFound when there is none. This is the erasure primitive: a packed
// blob's byte range is overwritten with zeros and the pack recompressed (or
// dropped with its last blob), so the bytes are gone from the live tables
// when Delete returns. Offsets of the other blobs do not move. Postgres keeps
// old row versions until VACUUM reclaims them, other processes' pack caches
// until they evict the pack, and WAL archives and backups are outside this
// package.
func (s *Store) Delete(ctx context.Context, hash string) error {
	digest, err := ParseHash(hash)
	if err != nil {
		return err
	}
	for range deleteRetries {
		var found bool
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			found, err = s.delete(ctx, tx, digest)
			return err
		})
		switch {
		case errors.Is(err, errRetryDelete):
			continue
		case err != nil:
			return fmt.Errorf("evidence: delete %s: %w", hash, err)
		case !found:
			return fmt.Errorf("evidence: delete %s: %w", hash, ErrNotFound)
		}
		return nil
	}
	return fmt.Errorf("evidence: delete %s: %w", hash, errRetryDelete)
}

func (s *Store) delete(ctx context.Context, tx pgx.Tx, digest [32]byte) (bool, error) {
	// A loose row being compacted makes this wait; once the compaction
	// commits the row is gone and the packed copy is found below.
	tag, err := tx.Exec(ctx, "DELETE FROM evidence_loose WHERE hash = $1", digest[:])
	if err != nil {
		return false, err
	}
	found := tag.RowsAffected() > 0
	var packID int32
	err = tx.QueryRow(ctx, "SELECT pack_id FROM evidence_packed WHERE hash = $1", digest[:]).Scan(&packID)
	if errors.Is(err, pgx.ErrNoRows) {
		return found, nil
	}
	if err != nil {
		return false, err
	}
	// Lock the pack before its index row: Deletes in one pack serialise on
	// the pack, so none of them rewrites it from a stale copy.
	var (
		count, off, n int32
		raw           int64
		frame         []byte
	)
	err = tx.QueryRow(ctx, "SELECT blob_count, raw_size, data FROM evidence_packs WHERE pack_id = $1 FOR UPDATE", packID).
		Scan(&count, &raw, &frame)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("%w: pack %d is missing", ErrCorrupt, packID)
	}
	if err != nil {
		return false, err
	}
	err = tx.QueryRow(ctx, "DELETE FROM evidence_packed WHERE hash = $1 AND pack_id = $2 RETURNING pack_offset, raw_size", digest[:], packID).
		Scan(&off, &n)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, errRetryDelete
	}
	if err != nil {
		return false, err
	}
	if count <= 1 {
		_, err = tx.Exec(ctx, "DELETE FROM evidence_packs WHERE pack_id = $1", packID)
	} else {
		pack, err := s.decode(frame, int(raw))
		if err != nil {
			return false, fmt.Errorf("pack %d: %w", packID, err)
		}
		end := int(off) + int(n)
		if end > len(pack) {
			return false, fmt.Errorf("%w: range %d+%d outside pack %d", ErrCorrupt, off, n, packID)
		}
		// Refuse to overwrite a range that does not hold this blob: that
		// would destroy other evidence and keep this one.
		if err := verify(digest, pack[off:end]); err != nil {
			return false, fmt.Errorf("pack %d: %w", packID, err)
		}
		clear(pack[off:end])
		newFrame := s.packEnc.EncodeAll(pack, make([]byte, 0, len(frame)))
		_, err = tx.Exec(ctx, `UPDATE evidence_packs SET generation = generation + 1, blob_count = blob_count - 1,
			stored_size = $2, data = $3 WHERE pack_id = $1`, packID, len(newFrame), newFrame)
	}
	if err != nil {
		return false, err
	}
	// Drop this process's decompressed copy now rather than at LRU
	// eviction: it holds the erased bytes.
	s.packs.evictPack(packID)
	return true, nil
}

// Stats describes the store's contents.
type Stats struct {
	// Blobs is the number of distinct blobs, LooseBlobs + PackedBlobs.
	Blobs       int64 `json:"blobs"`
	LooseBlobs  int64 `json:"loose_blobs"`
	PackedBlobs int64 `json:"packed_blobs"`
	// RawBytes is the total size of the distinct blobs, uncompressed.
	RawBytes int64 `json:"raw_bytes"`
	// StoredBytes is LooseStoredBytes + PackStoredBytes: compressed payload
	// bytes, without Postgres row and index overhead (see TableBytes).
	StoredBytes      int64 `json:"stored_bytes"`
	LooseStoredBytes int64 `json:"loose_stored_bytes"`
	PackStoredBytes  int64 `json:"pack_stored_bytes"`
	Packs            int64 `json:"packs"`
	// TableBytes is pg_total_relation_size of the three evidence tables
	// (heap, TOAST and indexes, dead rows included until VACUUM).
	TableBytes int64 `json:"table_bytes"`
}

// statsSQL counts a loose row only if its hash is not also packed (the
// transient duplicate a Put racing a compaction can leave); its stored bytes
// still count, since they occupy space until the next compaction.
const statsSQL = `
SELECT
	(SELECT count(*) FROM evidence_loose l WHERE NOT EXISTS (SELECT 1 FROM evidence_packed p WHERE p.hash = l.hash)),
	(SELECT coalesce(sum(raw_size), 0)::bigint FROM evidence_loose l WHERE NOT EXISTS (SELECT 1 FROM evidence_packed p WHERE p.hash = l.hash)),
	(SELECT coalesce(sum(stored_size), 0)::bigint FROM evidence_loose),
	(SELECT count(*) FROM evidence_packed),
	(SELECT coalesce(sum(raw_size), 0)::bigint FROM evidence_packed),
	(SELECT count(*) FROM evidence_packs),
	(SELECT coalesce(sum(stored_size), 0)::bigint FROM evidence_packs),
	pg_total_relation_size('evidence_loose') + pg_total_relation_size('evidence_packed') + pg_total_relation_size('evidence_packs')`

// Stats counts blobs and bytes. It scans the tables: meant for operators and
// tests, not for a hot path.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	var looseRaw, packedRaw int64
	err := s.pool.QueryRow(ctx, statsSQL).Scan(&st.LooseBlobs, &looseRaw, &st.LooseStoredBytes,
		&st.PackedBlobs, &packedRaw, &st.Packs, &st.PackStoredBytes, &st.TableBytes)
	if err != nil {
		return Stats{}, fmt.Errorf("evidence: stats: %w", err)
	}
	st.Blobs = st.LooseBlobs + st.PackedBlobs
	st.RawBytes = looseRaw + packedRaw
	st.StoredBytes = st.LooseStoredBytes + st.PackStoredBytes
	return st, nil
}
