package evidence_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/companyos/companyos/evidence"
)

func TestCompactReducesSizeAndKeepsEveryBlob(t *testing.T) {
	e := newEnv(t)
	// A tenth of graph50k: 5,000 entity.create and 22,000 relation.link bodies.
	blobs := fixtureBodies(t, 42, 5000, 22000)
	big := make([]byte, 100<<10) // above MaxBlobSize: must stay loose
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	e.putAll(append(blobs, big), 2000)
	before := e.stats()

	// Small packs, so the run writes several and reads back across them.
	rep, err := e.s.Compact(e.ctx, evidence.CompactOptions{PackTarget: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", rep)
	t.Logf("before: %+v", before)
	after := e.stats()
	t.Logf("after:  %+v", after)

	if rep.BlobsPacked != int64(len(blobs)) || rep.Packs < 3 || rep.CorruptSkipped != 0 || rep.DuplicatesDropped != 0 {
		t.Fatalf("report %+v: want %d blobs in several packs", rep, len(blobs))
	}
	if rep.ReductionPct < 60 {
		t.Fatalf("compaction reduced size by %.1f%% of raw, target ≥ 60%%", rep.ReductionPct)
	}
	if after.Blobs != before.Blobs || after.RawBytes != before.RawBytes || after.LooseBlobs != 1 || after.Packs != int64(rep.Packs) {
		t.Fatalf("stats after %+v, before %+v", after, before)
	}
	if after.StoredBytes >= before.StoredBytes {
		t.Fatalf("stored bytes %d → %d: no reduction", before.StoredBytes, after.StoredBytes)
	}
	var looseRaw int64
	for _, b := range blobs {
		looseRaw += int64(len(b))
	}
	if rep.RawBytes != looseRaw || rep.PackedBytes != after.PackStoredBytes || rep.LooseBytes != before.LooseStoredBytes-after.LooseStoredBytes {
		t.Fatalf("report bytes %+v do not add up (raw %d, stats before %+v after %+v)", rep, looseRaw, before, after)
	}

	all := append(blobs, big)
	e.mustReadAll(e.s, all)          // through the pack cache
	e.mustReadAll(e.store(nil), all) // a cold store
}

func TestCompactIsIdempotent(t *testing.T) {
	e := newEnv(t)
	blobs := uniqueBodies("idem", 3000)
	e.putAll(blobs, 1000)
	first, err := e.s.Compact(e.ctx, evidence.CompactOptions{PackTarget: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	st := e.stats()
	second, err := e.s.Compact(e.ctx, evidence.CompactOptions{PackTarget: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if first.BlobsPacked != 3000 || second.BlobsPacked != 0 || second.Packs != 0 || second.RawBytes != 0 {
		t.Fatalf("first %+v, second %+v: want everything packed once", first, second)
	}
	if again := e.stats(); again != st {
		t.Fatalf("second run changed stats: %+v → %+v", st, again)
	}
	// New blobs after a run go into new packs; old packs are untouched.
	more := uniqueBodies("idem2", 100)
	e.putAll(more, 1000)
	third, err := e.s.Compact(e.ctx, evidence.CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if third.BlobsPacked != 100 || third.Packs != 1 {
		t.Fatalf("third %+v: want the 100 new blobs in one pack", third)
	}
	e.mustReadAll(e.s, append(blobs, more...))
	if got := e.metric("evidence_compaction_runs_total"); got != 3 {
		t.Fatalf("evidence_compaction_runs_total = %v, want 3", got)
	}
}

// TestConcurrentPutDuringCompact stores new blobs and re-stores blobs being
// packed while several compactions run: nothing may be lost, and after a
// final compaction every blob is stored exactly once.
func TestConcurrentPutDuringCompact(t *testing.T) {
	e := newEnv(t)
	old := uniqueBodies("old", 3000)
	e.putAll(old, 1000)
	fresh := uniqueBodies("new", 1500)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 2 { // two compactors: SKIP LOCKED keeps them apart
		wg.Go(func() {
			if _, err := e.s.Compact(e.ctx, evidence.CompactOptions{PackTarget: 32 << 10}); err != nil {
				errs <- err
			}
		})
	}
	for w := range 3 {
		wg.Go(func() {
			// Each writer re-puts a slice of old blobs and puts new ones,
			// singly and in batches, in an order that crosses the packs.
			for i := w; i < len(old); i += 3 {
				batch := [][]byte{old[i], fresh[i/2]}
				if i%2 == 0 {
					if _, err := e.s.Put(e.ctx, old[len(old)-1-i]); err != nil {
						errs <- err
						return
					}
				}
				if err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error { return e.s.PutTx(e.ctx, tx, batch) }); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := append(append([][]byte{}, old...), fresh...)
	e.mustReadAll(e.store(nil), all)

	rep, err := e.s.Compact(e.ctx, evidence.CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final compaction: %+v", rep)
	if n := e.count(`SELECT count(*) FROM evidence_loose l JOIN evidence_packed p USING (hash)`); n != 0 {
		t.Fatalf("%d blobs both loose and packed after the final compaction", n)
	}
	st := e.stats()
	if st.Blobs != int64(len(all)) || st.LooseBlobs != 0 {
		t.Fatalf("stats %+v, want %d packed blobs", st, len(all))
	}
	e.mustReadAll(e.store(nil), all)
}

func TestDeleteLooseAndPacked(t *testing.T) {
	e := newEnv(t)
	blobs := uniqueBodies("del", 40)
	e.putAll(blobs, 100)

	// Loose.
	if err := e.s.Delete(e.ctx, evidence.Hash(blobs[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Get(e.ctx, evidence.Hash(blobs[0])); !errors.Is(err, evidence.ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
	}
	if err := e.s.Delete(e.ctx, evidence.Hash(blobs[0])); !errors.Is(err, evidence.ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}

	// Packed: one pack of the other 39 blobs; warm two caches on it.
	if rep, err := e.s.Compact(e.ctx, evidence.CompactOptions{}); err != nil || rep.Packs != 1 {
		t.Fatalf("compact: %+v, %v", rep, err)
	}
	other := e.store(nil)
	live := blobs[1:]
	e.mustReadAll(e.s, live)
	e.mustReadAll(other, live)

	// Delete the first, a middle and the last blob of the pack (pack order is
	// hash order).
	ordered := e.packOrder()
	victims := []string{ordered[0], ordered[len(ordered)/2], ordered[len(ordered)-1]}
	for _, h := range victims {
		if err := e.s.Delete(e.ctx, h); err != nil {
			t.Fatalf("delete packed %s: %v", h, err)
		}
	}
	var kept [][]byte
	for _, b := range live {
		gone := false
		for _, h := range victims {
			gone = gone || evidence.Hash(b) == h
		}
		if gone {
			if _, err := other.Get(e.ctx, evidence.Hash(b)); !errors.Is(err, evidence.ErrNotFound) {
				t.Fatalf("Get of deleted packed blob = %v, want ErrNotFound", err)
			}
			if bytes.Contains(e.packBytes(), b) {
				t.Fatalf("deleted blob %s still inside its pack", evidence.Hash(b))
			}
			continue
		}
		kept = append(kept, b)
	}
	// Both stores had the pack cached before the deletes; the others still
	// read back byte-exact through them.
	e.mustReadAll(e.s, kept)
	e.mustReadAll(other, kept)
	if st := e.stats(); st.Blobs != int64(len(kept)) || st.PackedBlobs != int64(len(kept)) {
		t.Fatalf("stats %+v, want %d packed blobs", st, len(kept))
	}

	// Deleting concurrently from one pack serialises on the pack, and
	// deleting its last blob drops the pack.
	var wg sync.WaitGroup
	errs := make(chan error, len(kept))
	for _, b := range kept {
		wg.Go(func() {
			if err := other.Delete(e.ctx, evidence.Hash(b)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := e.stats(); st.Blobs != 0 || st.Packs != 0 || st.StoredBytes != 0 {
		t.Fatalf("stats after deleting everything %+v", st)
	}
}

// packOrder returns the hashes of the only pack, in offset order.
func (e *env) packOrder() []string {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, "SELECT hash FROM evidence_packed ORDER BY pack_offset")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d []byte
		if err := rows.Scan(&d); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("sha256:%x", d))
	}
	return out
}

// packBytes returns the decompressed content of every pack, concatenated.
func (e *env) packBytes() []byte {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, "SELECT data FROM evidence_packs")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []byte
	for rows.Next() {
		var frame []byte
		if err := rows.Scan(&frame); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, unzstd(e.t, frame)...)
	}
	return out
}
