package ledger

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

func TestExportReads(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 12)
	e.produceChain("globex", 3)
	p := e.projector(nil)
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	l := p.Ledger()
	// The helpers' receipts are created 2026-01-01T00:00:00 + seq ns, which
	// Postgres rounds to one microsecond: spread them a minute apart.
	if _, err := e.pool.Exec(e.ctx, "UPDATE receipts SET created_at = created_at + seq * interval '1 minute'"); err != nil {
		t.Fatal(err)
	}
	at := func(seq int) time.Time { return time.Date(2026, 1, 1, 0, seq, 0, 0, time.UTC) }
	first, last, n, ok, err := l.ReceiptSeqRange(e.ctx, "acme", at(3), at(9))
	if err != nil || !ok || first != 3 || last != 8 || n != 6 {
		t.Fatalf("range = %d…%d (%d) %v %v", first, last, n, ok, err)
	}
	if _, _, _, ok, err := l.ReceiptSeqRange(e.ctx, "acme", at(100), at(200)); ok || err != nil {
		t.Fatalf("empty range: %v %v", ok, err)
	}

	s, err := l.Snapshot(e.ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	// The projector signed a checkpoint of size 12 on shutdown.
	latest, err := s.LatestCheckpoint(e.ctx)
	if err != nil || latest.TreeSize != 12 {
		t.Fatalf("latest = %+v, %v", latest, err)
	}
	if cs, err := s.Checkpoints(e.ctx, 1, 11); err != nil || len(cs) != 0 {
		t.Fatalf("checkpoints below 12 = %v, %v", cs, err)
	}
	// Stored hashes agree with the ledger's own tree hash.
	idx := []int64{tlog.StoredHashIndex(3, 0), tlog.StoredHashIndex(2, 2)}
	hs, err := s.StoredHashes(e.ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := l.TreeHash(e.ctx, "acme", 12)
	if err != nil || tlog.NodeHash(hs[idx[0]], hs[idx[1]]) != want {
		t.Fatalf("stored hashes do not give the tree hash: %v", err)
	}
	if _, err := s.StoredHashes(e.ctx, []int64{tlog.StoredHashIndex(4, 0)}); err == nil {
		t.Fatal("a missing stored hash must be an error")
	}

	var seqs []int64
	err = s.ScanReceipts(e.ctx, 4, 7, func(r *ExportRow) error {
		seqs = append(seqs, r.Seq)
		if len(r.Envelope) == 0 || r.ID == "" || r.PolicyVersion == "" {
			t.Errorf("row %+v", r)
		}
		return nil
	})
	if err != nil || len(seqs) != 4 || seqs[0] != 4 || seqs[3] != 7 {
		t.Fatalf("scan = %v, %v", seqs, err)
	}
	if err := s.ScanReceipts(e.ctx, 10, 14, func(*ExportRow) error { return nil }); err == nil {
		t.Fatal("scanning past the head must fail")
	}
	stop := errors.New("stop")
	if err := s.ScanReceipts(e.ctx, 1, 12, func(*ExportRow) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error = %v", err)
	}
}
