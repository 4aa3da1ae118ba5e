package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
)

// verifyingProjector is the live projector as the app runs it: with the
// receipt keys, so a bad signature breaks its tenant.
func (e *env) verifyingProjector() *Projector {
	e.t.Helper()
	ks := keySetOf(e)
	p := e.projector(nil)
	p.cfg.Keys = &ks
	return p
}

func (e *env) projectAll() {
	e.t.Helper()
	if err := e.runUntil(e.verifyingProjector(), e.caughtUp); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) replay(cfg ReplayConfig) *ReplayReport {
	e.t.Helper()
	cfg.Brokers, cfg.Pool, cfg.Keys = e.brokers, e.pool, keySetOf(e)
	rep, err := Replay(e.ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return rep
}

// produceRecord produces one value and returns the record with its
// partition and offset.
func (e *env) produceRecord(tenant string, v []byte) *kgo.Record {
	e.t.Helper()
	rec := &kgo.Record{Topic: events.TopicEvents, Key: []byte(tenant), Value: v}
	if err := e.cl.ProduceSync(e.ctx, rec).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
	return rec
}

func reportJSON(rep *ReplayReport) string {
	b, _ := json.MarshalIndent(rep, "", "  ")
	return string(b)
}

func TestReplayCleanLedgerHasNoDiff(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 300)
	e.produceChain("globex", 300)
	e.produceChain("initech", 300)
	e.projectAll()

	rep := e.replay(ReplayConfig{})
	if !rep.OK() || !rep.Verified() {
		t.Fatalf("replay not OK:\n%s", reportJSON(rep))
	}
	d := rep.Diff
	if rep.Records != 900 || rep.Selected != 900 || rep.SignaturesVerified != 900 || rep.LinksVerified != 900 || rep.Tenants != 3 || rep.Partial ||
		rep.SkippedOffsets != 0 {
		t.Fatalf("counts:\n%s", reportJSON(rep))
	}
	if d.Compared != 900 || d.LiveRows != 900 || d.RootsCompared != 3 || d.CheckpointsChecked != 3 || d.Pending != 0 ||
		d.MerkleCompared != 3*tlog.StoredHashCount(300) || d.MerkleDiffs != 0 {
		t.Fatalf("diff:\n%s", reportJSON(rep))
	}
	// The shadow schema is gone.
	if n := e.count("SELECT count(*) FROM pg_namespace WHERE nspname = $1", d.Shadow); n != 0 || !strings.HasPrefix(d.Shadow, "replay_") {
		t.Fatalf("shadow schema %q left behind (%d)", d.Shadow, n)
	}

	// One tenant, with checkpoint signatures verified too.
	l, err := NewLedger(e.pool, CheckpointSigner{Name: "companyos-ledger", Key: e.cpKey})
	if err != nil {
		t.Fatal(err)
	}
	rep = e.replay(ReplayConfig{Tenant: "globex", CheckpointVerifier: l.VerifierKey(), KeepShadow: true})
	if !rep.OK() || rep.Selected != 300 || rep.LinksVerified != 300 || rep.Diff.Compared != 300 || rep.Diff.CheckpointsChecked != 1 {
		t.Fatalf("tenant replay:\n%s", reportJSON(rep))
	}
	if n := e.count("SELECT count(*) FROM " + pgIdent(rep.Diff.Shadow, "receipts")); n != 300 {
		t.Fatalf("kept shadow has %d receipts", n)
	}
	// A checkpoint verifier of another key rejects the live notes.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	lo, _ := NewLedger(e.pool, CheckpointSigner{Name: "companyos-ledger", Key: other})
	rep = e.replay(ReplayConfig{Tenant: "globex", CheckpointVerifier: lo.VerifierKey()})
	if rep.OK() || len(rep.Diff.Heads) != 1 || rep.Diff.Heads[0].What != "checkpoint 300" {
		t.Fatalf("foreign checkpoint key:\n%s", reportJSON(rep))
	}

	// Receipts the live ledger has not projected yet are pending, not missing.
	e.produceChain("acme", 5)
	rep = e.replay(ReplayConfig{})
	if !rep.OK() || rep.Diff.Pending != 5 || rep.LinksVerified != 905 || rep.Diff.Compared != 900 {
		t.Fatalf("with a lagging ledger:\n%s", reportJSON(rep))
	}

	// Verify only: no shadow, no diff.
	rep = e.replay(ReplayConfig{VerifyOnly: true})
	if !rep.OK() || rep.Diff != nil || rep.LinksVerified != 905 {
		t.Fatalf("verify only:\n%s", reportJSON(rep))
	}
}

func pgIdent(parts ...string) string {
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(q, ".")
}

func TestReplayReportsAlteredMissingAndExtraRows(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 40)
	e.produceChain("globex", 20)
	e.projectAll()
	for _, q := range []string{
		`UPDATE receipts SET actor = 'user:mallory' WHERE id = 'rcpt_acme_5_5'`,
		`UPDATE receipts SET envelope = envelope || '\x20'::bytea WHERE id = 'rcpt_globex_7_7'`,
		`DELETE FROM receipts WHERE id = 'rcpt_acme_9_9'`,
		// A forged row inside the replayed offsets, and one at an offset
		// the live ledger cannot have read yet.
		`CREATE TEMP TABLE forged AS SELECT * FROM receipts WHERE id = 'rcpt_acme_3_3'`,
		`UPDATE forged SET id = 'rcpt_forged_1', seq = 1000`,
		`INSERT INTO receipts SELECT * FROM forged`,
		`UPDATE forged SET id = 'rcpt_forged_2', seq = 1001, kafka_offset = 99999`,
		`INSERT INTO receipts SELECT * FROM forged`,
	} {
		if _, err := e.pool.Exec(e.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rep := e.replay(ReplayConfig{})
	if !rep.Verified() || rep.OK() {
		t.Fatalf("want a verified log and a diff:\n%s", reportJSON(rep))
	}
	d := rep.Diff
	if d.Altered != 2 || d.Missing != 1 || d.Extra != 2 {
		t.Fatalf("diff counts:\n%s", reportJSON(rep))
	}
	alt := map[string]RowDiff{}
	for _, r := range d.AlteredRows {
		alt[r.ID] = r
	}
	if a := alt["rcpt_acme_5_5"]; !slices.Equal(a.Columns, []string{"actor"}) || a.Seq != 5 || a.Tenant != "acme" ||
		*a.Changes["actor"][0] != "user:mallory" || *a.Changes["actor"][1] != "user:alice" {
		t.Fatalf("altered actor: %+v", a)
	}
	if a := alt["rcpt_globex_7_7"]; !slices.Equal(a.Columns, []string{"envelope"}) {
		t.Fatalf("altered envelope: %+v", a)
	}
	if m := d.MissingRows[0]; m.ID != "rcpt_acme_9_9" || m.Seq != 9 || m.Tenant != "acme" {
		t.Fatalf("missing: %+v", m)
	}
	var extra []string
	for _, x := range d.ExtraRows {
		extra = append(extra, x.ID)
	}
	if slices.Sort(extra); !slices.Equal(extra, []string{"rcpt_forged_1", "rcpt_forged_2"}) {
		t.Fatalf("extra: %v", extra)
	}
	// The Merkle tables were not touched: heads and roots agree.
	if len(d.Heads) != 0 {
		t.Fatalf("heads: %+v", d.Heads)
	}

	// A tampered stored hash changes the live root.
	if _, err := e.pool.Exec(e.ctx, `UPDATE merkle_hashes SET hash = sha256(hash) WHERE tenant = 'globex' AND idx = 0`); err != nil {
		t.Fatal(err)
	}
	rep = e.replay(ReplayConfig{Tenant: "globex"})
	var whats []string
	for _, h := range rep.Diff.Heads {
		whats = append(whats, h.What)
	}
	// Leaf 0 is not on the path of the root of 20 leaves, but proofs read
	// it: the stored hashes are compared one by one.
	if !slices.Contains(whats, "merkle_hash 0") || rep.Diff.MerkleDiffs != 1 || rep.Diff.MerkleCompared != tlog.StoredHashCount(20) || rep.Diff.Altered != 1 {
		t.Fatalf("tampered Merkle hash:\n%s", reportJSON(rep))
	}
	if _, err := e.pool.Exec(e.ctx, `UPDATE merkle_hashes SET hash = sha256(hash) WHERE tenant = 'globex' AND idx = $1`, tlog.StoredHashIndex(4, 0)); err != nil {
		t.Fatal(err)
	}
	rep = e.replay(ReplayConfig{Tenant: "globex"})
	whats = whats[:0]
	for _, h := range rep.Diff.Heads {
		whats = append(whats, h.What)
	}
	if !slices.Contains(whats, "root") || rep.Diff.MerkleDiffs != 2 {
		t.Fatalf("tampered Merkle node on the root's path:\n%s", reportJSON(rep))
	}
}

func TestReplayReportsFirstBrokenLink(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 10)
	e.produceChain("globex", 10)
	// acme seq 11: signed, then its payload changed.
	var env events.Envelope
	if err := json.Unmarshal(e.receipt("acme", nil), &env); err != nil {
		t.Fatal(err)
	}
	env.Payload = bytes.Replace(env.Payload, []byte(`"user:alice"`), []byte(`"user:eve"`), 1)
	bad, _ := env.Marshal()
	rec := e.produceRecord("acme", bad)
	e.produceChain("acme", 4)
	e.produceChain("globex", 5)
	e.projectAll()

	rep := e.replay(ReplayConfig{})
	if rep.Verified() || rep.FirstBroken == nil {
		t.Fatalf("want a broken link:\n%s", reportJSON(rep))
	}
	b := *rep.FirstBroken
	if b.Tenant != "acme" || b.Seq != 11 || b.Partition != rec.Partition || b.Offset != rec.Offset || b.Kind != BrokenSignature ||
		!strings.Contains(b.Reason, "signature does not verify") {
		t.Fatalf("first broken link = %+v, record at %d/%d", b, rec.Partition, rec.Offset)
	}
	if len(rep.Broken) != 1 || rep.SignatureFailures != 1 || rep.Unchecked != 4 || rep.LinksVerified != 25 {
		t.Fatalf("counts:\n%s", reportJSON(rep))
	}
	// The live projector broke acme at the same record, so the shadow
	// (same write path) agrees with it.
	if !rep.Diff.Empty() {
		t.Fatalf("diff:\n%s", reportJSON(rep))
	}

	// A gap: the chain check names the record.
	e2 := newEnv(t)
	e2.produceChain("acme", 3)
	gap := e2.produceRecord("acme", e2.receipt("acme", func(r *events.Receipt) { r.Seq = 5 }))
	e2.projectAll()
	rep = e2.replay(ReplayConfig{Tenant: "acme", VerifyOnly: true})
	if b := rep.FirstBroken; b == nil || b.Seq != 5 || b.Offset != gap.Offset || b.Kind != BrokenChain || !strings.Contains(b.Reason, "seq 5, want 4") {
		t.Fatalf("gap:\n%s", reportJSON(rep))
	}
}

func TestReplayDuplicatesAreNotBreaks(t *testing.T) {
	e := newEnv(t)
	vals := make([][]byte, 20)
	for i := range vals {
		vals[i] = e.receipt("acme", nil)
	}
	e.produce("acme", vals...)
	e.produce("acme", vals[10:]...)
	e.produceChain("acme", 5)
	e.projectAll()
	rep := e.replay(ReplayConfig{})
	if !rep.OK() || rep.Duplicates != 10 || rep.LinksVerified != 25 || rep.Diff.Compared != 25 {
		t.Fatalf("duplicates:\n%s", reportJSON(rep))
	}
}

func TestReplayPartialRange(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 30)
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	e.produceChain("acme", 30)
	e.projectAll()
	var part int32
	if err := e.pool.QueryRow(e.ctx, "SELECT kafka_partition FROM receipts WHERE tenant = 'acme' LIMIT 1").Scan(&part); err != nil {
		t.Fatal(err)
	}
	// Outside the range: never reported by a partial replay.
	if _, err := e.pool.Exec(e.ctx, `UPDATE receipts SET actor = 'user:mallory' WHERE tenant = 'acme' AND seq = 5`); err != nil {
		t.Fatal(err)
	}

	rep := e.replay(ReplayConfig{From: Bound{Offsets: map[int32]int64{part: 20}}})
	if !rep.OK() || !rep.Partial || rep.Selected != 40 || rep.LinksVerified != 40 || rep.Diff.Compared != 40 || rep.Diff.RootsCompared != 1 ||
		rep.Diff.CheckpointsChecked != 1 {
		t.Fatalf("from offset 20:\n%s", reportJSON(rep))
	}
	if a := rep.Anchors; len(a) != 1 || a[0].Tenant != "acme" || a[0].Seq != 20 || a[0].Offset != 20 {
		t.Fatalf("anchors: %+v", a)
	}
	// Only the nodes the rebuilt leaves 21..60 completed are compared.
	if n := tlog.StoredHashIndex(0, 60) - tlog.StoredHashIndex(0, 20); rep.Diff.MerkleCompared != n {
		t.Fatalf("merkle compared %d, want %d", rep.Diff.MerkleCompared, n)
	}

	// From a time, to an offset, with a change inside the range.
	if _, err := e.pool.Exec(e.ctx, `UPDATE receipts SET decision = 'deny' WHERE tenant = 'acme' AND seq = 40`); err != nil {
		t.Fatal(err)
	}
	rep = e.replay(ReplayConfig{Tenant: "acme", From: Bound{Time: mid}, To: Bound{Offsets: map[int32]int64{AllPartitions: 50}}})
	if !rep.Verified() || rep.Selected != 20 || rep.Diff.Compared != 20 || rep.Diff.Altered != 1 || rep.Diff.Missing+rep.Diff.Extra != 0 ||
		len(rep.Diff.Heads) != 0 {
		t.Fatalf("from time, to offset 50:\n%s", reportJSON(rep))
	}
	if a := rep.Diff.AlteredRows[0]; a.Seq != 40 || !slices.Equal(a.Columns, []string{"decision"}) {
		t.Fatalf("altered: %+v", a)
	}
	if a := rep.Anchors; len(a) != 1 || a[0].Seq != 30 {
		t.Fatalf("anchors: %+v", a)
	}

	// An anchor the live ledger disagrees with.
	if _, err := e.pool.Exec(e.ctx, `UPDATE receipts SET payload_hash = 'sha256:00' WHERE tenant = 'acme' AND seq = 20`); err != nil {
		t.Fatal(err)
	}
	rep = e.replay(ReplayConfig{From: Bound{Offsets: map[int32]int64{part: 20}}})
	if rep.OK() || len(rep.Diff.Heads) != 1 || rep.Diff.Heads[0].What != "anchor" || rep.Diff.Altered != 1 {
		t.Fatalf("bad anchor:\n%s", reportJSON(rep))
	}
}

func TestReplayKeepsLogOrder(t *testing.T) {
	e := newEnv(t)
	tenants := []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"}
	// Interleaved produce calls, large enough for several fetches and for
	// parallel parsing within a fetch.
	for round := range 4 {
		for _, tn := range tenants {
			e.produceChain(tn, 100+round*50)
		}
	}
	e.projectAll()
	type seen struct {
		seq    int64
		part   int32
		offset int64
	}
	lastOff := map[int32]int64{}
	lastSeq := map[string]int64{}
	n := 0
	var bad []string
	rep := e.replay(ReplayConfig{observe: func(tenant string, seq int64, part int32, off int64) {
		n++
		if o, ok := lastOff[part]; ok && off <= o {
			bad = append(bad, fmt.Sprintf("partition %d: offset %d after %d", part, off, o))
		}
		if seq != lastSeq[tenant]+1 {
			bad = append(bad, fmt.Sprintf("tenant %s: seq %d after %d", tenant, seq, lastSeq[tenant]))
		}
		lastOff[part], lastSeq[tenant] = off, seq
	}})
	if len(bad) > 0 {
		t.Fatalf("out of order: %v", bad[:min(len(bad), 10)])
	}
	const total = 8 * (100 + 150 + 200 + 250)
	if !rep.OK() || n != total || rep.LinksVerified != total || rep.Diff.Compared != total {
		t.Fatalf("n = %d:\n%s", n, reportJSON(rep))
	}
	// The shadow stored every receipt at its own log position, in seq order.
	if rep.Diff.Altered != 0 {
		t.Fatalf("positions differ:\n%s", reportJSON(rep))
	}
}

func TestReplayReportSignature(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	rep := &ReplayReport{Version: 1, Topic: events.TopicEvents, Records: 3, LinksVerified: 3, Diff: &ReplayDiff{Compared: 3}}
	signed, err := SignReplayReport(rep, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenReplayReport(signed, pub)
	if err != nil || got.Records != 3 || got.Diff.Compared != 3 {
		t.Fatalf("open = %+v, %v", got, err)
	}
	var env events.Envelope
	if err := json.Unmarshal(signed, &env); err != nil || env.PayloadType != ReplayReportPayloadType {
		t.Fatalf("envelope: %v %q", err, env.PayloadType)
	}
	env.Payload = bytes.Replace(env.Payload, []byte(`"records_read":3`), []byte(`"records_read":4`), 1)
	tampered, _ := json.Marshal(env)
	if _, err := OpenReplayReport(tampered, pub); err == nil {
		t.Fatal("tampered report opened")
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := OpenReplayReport(signed, otherPub); err == nil {
		t.Fatal("report opened with another key")
	}
}
