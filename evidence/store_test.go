package evidence_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/evidence"
)

func TestPutGetRoundTrip(t *testing.T) {
	e := newEnv(t)
	big := make([]byte, 1<<20) // incompressible, larger than a TOAST chunk
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	blobs := [][]byte{
		[]byte(`{"type":"entity.create","payload":{"id":"user:u123","kind":"user","attrs":{"name":"Ann","region":"eu"}}}`),
		{},
		{0, 1, 2, 0xff},
		big,
	}
	for _, b := range blobs {
		h, err := e.s.Put(e.ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if want := events.EvidenceHash(b); h != want {
			t.Fatalf("Put returned %s, events.EvidenceHash says %s", h, want)
		}
		if ok, err := e.s.Has(e.ctx, h); err != nil || !ok {
			t.Fatalf("Has(%s) = %v, %v", h, ok, err)
		}
	}
	e.mustReadAll(e.s, blobs)

	st := e.stats()
	var raw int64
	for _, b := range blobs {
		raw += int64(len(b))
	}
	if st.Blobs != 4 || st.LooseBlobs != 4 || st.RawBytes != raw || st.Packs != 0 || st.StoredBytes <= 0 || st.TableBytes <= 0 {
		t.Fatalf("stats %+v, want 4 loose blobs of %d raw bytes", st, raw)
	}

	missing := evidence.Hash([]byte("never stored"))
	if _, err := e.s.Get(e.ctx, missing); !errors.Is(err, evidence.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if ok, err := e.s.Has(e.ctx, missing); err != nil || ok {
		t.Fatalf("Has(missing) = %v, %v", ok, err)
	}
	for _, bad := range []string{"", "sha256:", "sha256:abc", strings.ToUpper(missing), "md5:" + missing[7:], missing + "00"} {
		if _, err := e.s.Get(e.ctx, bad); !errors.Is(err, evidence.ErrInvalidHash) {
			t.Errorf("Get(%q) = %v, want ErrInvalidHash", bad, err)
		}
	}
}

func TestPutDedupes(t *testing.T) {
	e := newEnv(t)
	a, b := []byte(`{"type":"relation.link","payload":{"from":"user:u1","rel":"member_of","to":"team:t3"}}`), []byte(`{"b":1}`)
	for range 3 {
		if _, err := e.s.Put(e.ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	// Repeats inside one batch, and a blob stored before.
	e.putAll([][]byte{b, a, b, b}, 10)
	if n := e.count("SELECT count(*) FROM evidence_loose"); n != 2 {
		t.Fatalf("%d loose rows, want 2", n)
	}
	if got := e.metric("evidence_blobs_written_total"); got != 2 {
		t.Fatalf("evidence_blobs_written_total = %v, want 2", got)
	}
	if got, want := e.metric("evidence_bytes_raw_total"), float64(len(a)+len(b)); got != want {
		t.Fatalf("evidence_bytes_raw_total = %v, want %v", got, want)
	}

	// Once packed, storing the blob again is still a no-op.
	if _, err := e.s.Compact(e.ctx, evidence.CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Put(e.ctx, a); err != nil {
		t.Fatal(err)
	}
	e.putAll([][]byte{a, b}, 10)
	if n := e.count("SELECT count(*) FROM evidence_loose"); n != 0 {
		t.Fatalf("%d loose rows after re-putting packed blobs, want 0", n)
	}
	if st := e.stats(); st.Blobs != 2 || st.PackedBlobs != 2 {
		t.Fatalf("stats %+v, want 2 packed blobs", st)
	}
	e.mustReadAll(e.s, [][]byte{a, b})
}

func TestPutTxRollbackStoresNothing(t *testing.T) {
	e := newEnv(t)
	blobs := uniqueBodies("rb", 500)
	tx, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.PutTx(e.ctx, tx, blobs); err != nil {
		t.Fatal(err)
	}
	// Inside the transaction the rows exist...
	var inTx int64
	if err := tx.QueryRow(e.ctx, "SELECT count(*) FROM evidence_loose").Scan(&inTx); err != nil || inTx != 500 {
		t.Fatalf("rows inside tx = %d, %v; want 500", inTx, err)
	}
	if err := tx.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}
	// ...and after the rollback nothing is left.
	if st := e.stats(); st.Blobs != 0 || st.StoredBytes != 0 {
		t.Fatalf("stats after rollback %+v, want empty", st)
	}
	if ok, err := e.s.Has(e.ctx, evidence.Hash(blobs[0])); err != nil || ok {
		t.Fatalf("Has after rollback = %v, %v", ok, err)
	}
	// An empty batch is a no-op.
	if err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error { return e.s.PutTx(e.ctx, tx, nil) }); err != nil {
		t.Fatal(err)
	}
}

func TestGetVerifiesHash(t *testing.T) {
	e := newEnv(t)
	good := []byte(`{"type":"entity.create","payload":{"id":"user:u1"}}`)
	h, err := e.s.Put(e.ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func(data []byte, raw int) {
		t.Helper()
		if _, err := e.pool.Exec(e.ctx, "UPDATE evidence_loose SET data = $2, raw_size = $3 WHERE hash = $1", digest(t, h), data, raw); err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.Get(e.ctx, h); !errors.Is(err, evidence.ErrCorrupt) {
			t.Fatalf("Get after corruption = %v, want ErrCorrupt", err)
		}
	}
	evil := bytes.Replace(good, []byte("u1"), []byte("u2"), 1)
	corrupt(zstdFrame(t, evil), len(evil))   // valid frame, other content
	corrupt([]byte("not zstd at all"), 10)   // not a frame
	corrupt(zstdFrame(t, good), len(good)-1) // right content, wrong size

	// A damaged pack is caught too (fresh Store: nothing cached).
	if _, err := e.s.Put(e.ctx, good[:10]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Compact(e.ctx, evidence.CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	h2 := evidence.Hash(good[:10])
	var frame []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT data FROM evidence_packs").Scan(&frame); err != nil {
		t.Fatal(err)
	}
	pack := unzstd(t, frame)
	pack[0] ^= 0xff
	if _, err := e.pool.Exec(e.ctx, "UPDATE evidence_packs SET data = $1", zstdFrame(t, pack)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store(nil).Get(e.ctx, h2); !errors.Is(err, evidence.ErrCorrupt) {
		t.Fatalf("Get from damaged pack = %v, want ErrCorrupt", err)
	}
}

func TestConfigAndMetricsRegistration(t *testing.T) {
	if _, err := evidence.New(evidence.Config{}); err == nil {
		t.Fatal("New without a pool succeeded")
	}
	e := newEnv(t)
	// The same registry cannot take a second store's metrics: no silent
	// double counting.
	if _, err := evidence.New(evidence.Config{Pool: e.pool, Registerer: e.reg}); err == nil {
		t.Fatal("second Store on one registry succeeded")
	}
	if _, err := e.s.Compact(e.ctx, evidence.CompactOptions{PackTarget: evidence.MaxPackTarget + 1}); err == nil {
		t.Fatal("Compact with an oversized PackTarget succeeded")
	}
	if got := e.metric("evidence_compaction_runs_total"); got != 1 {
		t.Fatalf("evidence_compaction_runs_total = %v, want 1 (error)", got)
	}
}
