package audit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/ledger"
)

// t0 is created_at of every tenant's seq 1; receipts are a minute apart.
var t0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// env is a real ledger: an embedded Kafka broker, a fresh Postgres database
// and the ledger projector, fed with generated, validly signed receipts.
type env struct {
	t       testing.TB
	ctx     context.Context
	brokers []string
	pool    *pgxpool.Pool
	cl      *kgo.Client
	signer  *events.Signer
	cpKey   ed25519.PrivateKey
	ledger  *ledger.Ledger
	chains  map[string]*audittest.Chain
	total   int64
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, events.TopicEvents))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	pool, err := stores.EnsurePostgres(ctx, stores.TestPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	l, err := ledger.NewLedger(pool, ledger.CheckpointSigner{Name: "companyos-ledger", Key: ck})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, brokers: c.ListenAddrs(), pool: pool, cl: cl, signer: events.NewSigner(sk), cpKey: ck,
		ledger: l, chains: map[string]*audittest.Chain{}}
}

func (e *env) keys() keyfile.KeySet {
	return keyfile.KeySet{Keys: []keyfile.PublicKey{e.signer.Public()}}
}

func (e *env) chain(tenant string) *audittest.Chain {
	c := e.chains[tenant]
	if c == nil {
		c = audittest.NewChain(tenant, e.signer, t0)
		c.Step = time.Minute
		e.chains[tenant] = c
	}
	return c
}

// produce appends n receipts of tenant to the log; mutate (optional) may
// change each before it is signed.
func (e *env) produce(tenant string, n int, mutate func(*events.Receipt)) {
	e.t.Helper()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		_, v := e.chain(tenant).Next(mutate)
		recs[i] = &kgo.Record{Topic: events.TopicEvents, Key: []byte(tenant), Value: v}
	}
	if err := e.cl.ProduceSync(e.ctx, recs...).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
	e.total += int64(n)
}

// project runs the ledger projector until every produced receipt is
// applied; on shutdown it signs a checkpoint of every tenant.
func (e *env) project() {
	e.t.Helper()
	p, err := ledger.NewProjector(ledger.Config{Brokers: e.brokers, Pool: e.pool, Signer: ledger.CheckpointSigner{Name: "companyos-ledger", Key: e.cpKey},
		CheckpointInterval: time.Hour, MaxWait: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var n int64
		if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM receipts").Scan(&n); err != nil {
			e.t.Fatal(err)
		}
		if n == e.total {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("projector applied %d of %d receipts", n, e.total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		e.t.Fatal(err)
	}
}

// export writes tenant's bundle of [from, to); mod (optional) adjusts the config.
func (e *env) export(tenant string, from, to time.Time, mod func(*ExportConfig)) ([]byte, ExportResult) {
	e.t.Helper()
	var buf bytes.Buffer
	cfg := ExportConfig{Ledger: e.ledger, Tenant: tenant, From: from, To: to, Keys: e.keys(), Out: &buf, GeneratedBy: "companyos test", TempDir: e.t.TempDir()}
	if mod != nil {
		mod(&cfg)
	}
	res, err := Export(e.ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return buf.Bytes(), res
}

// standard builds tenant acme with 30 receipts and checkpoints at 10, 20
// and 30 (plus noise from another tenant), and returns its full bundle.
func standard(t *testing.T) (*env, []byte) {
	t.Helper()
	e := newEnv(t)
	for range 3 {
		e.produce("acme", 10, nil)
		e.produce("globex", 2, nil)
		e.project()
	}
	b, res := e.export("acme", t0, t0.Add(24*time.Hour), nil)
	if res.Receipts != 30 || res.Checkpoints != 3 || res.TreeSize != 30 || res.SignedCheckpoint {
		t.Fatalf("export: %+v", res)
	}
	return e, b
}

// ---- bundle surgery: untar, change, re-tar with consistent manifest ----

type file struct {
	name string
	data []byte
}

type bundle struct {
	files []file
}

func openBundle(t testing.TB, b []byte) *bundle {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bundle
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out.files = append(out.files, file{h.Name, data})
	}
	return &out
}

func (b *bundle) get(name string) []byte {
	for _, f := range b.files {
		if f.name == name {
			return f.data
		}
	}
	return nil
}

func (b *bundle) set(name string, data []byte) {
	for i, f := range b.files {
		if f.name == name {
			b.files[i].data = data
			return
		}
	}
	// New files go before receipts.jsonl, which stays last.
	i := slices.IndexFunc(b.files, func(f file) bool { return f.name == ReceiptsFile })
	b.files = slices.Insert(b.files, i, file{name, data})
}

func (b *bundle) manifest(t testing.TB) Manifest {
	var m Manifest
	if err := json.Unmarshal(b.get(ManifestFile), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// lines splits a .jsonl file.
func (b *bundle) lines(name string) [][]byte {
	raw := bytes.TrimSuffix(b.get(name), []byte("\n"))
	return bytes.Split(raw, []byte("\n"))
}

func (b *bundle) setLines(name string, lines [][]byte) {
	b.set(name, append(bytes.Join(lines, []byte("\n")), '\n'))
}

// receipts decodes receipts.jsonl.
func (b *bundle) receipts(t testing.TB) []ReceiptLine {
	var out []ReceiptLine
	for _, l := range b.lines(ReceiptsFile) {
		var r ReceiptLine
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func (b *bundle) setReceipts(t testing.TB, rs []ReceiptLine) {
	lines := make([][]byte, len(rs))
	for i, r := range rs {
		var err error
		if lines[i], err = json.Marshal(r); err != nil {
			t.Fatal(err)
		}
	}
	b.setLines(ReceiptsFile, lines)
}

// bytes re-tars the bundle. With fix, the manifest's hashes, receipt count
// and seq range are recomputed, as a forger would, so only the check under
// test can fail.
func (b *bundle) bytes(t testing.TB, fix bool) []byte {
	t.Helper()
	if fix {
		m := b.manifest(t)
		m.Files = map[string]string{}
		for _, f := range b.files {
			if f.name != ManifestFile {
				m.Files[f.name] = events.HashPayload(f.data)
			}
		}
		rs := b.receipts(t)
		m.Bundle.ReceiptCount = int64(len(rs))
		if len(rs) > 0 {
			m.Bundle.FirstSeq, m.Bundle.LastSeq = rs[0].Seq, rs[len(rs)-1].Seq
		}
		raw, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		b.set(ManifestFile, append(raw, '\n'))
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range b.files {
		if err := writeTarFile(tw, f.name, f.data, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// payload decodes a receipt line's signed payload.
func payloadOf(t testing.TB, r ReceiptLine) events.Receipt {
	env, err := events.ParseEnvelope(r.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := events.ParseReceipt(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// resign replaces r's envelope with rec signed by s: what an insider who
// holds the receipt signing key (but not the checkpoint key) can do.
func resign(t testing.TB, s *events.Signer, r *ReceiptLine, rec events.Receipt) {
	payload, err := events.MarshalReceipt(rec)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Sign(payload).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	r.Envelope, r.Seq, r.ID = v, int64(rec.Seq), rec.ID
}

func verifyBytes(t testing.TB, b []byte, opts VerifyOptions) (Report, error) {
	t.Helper()
	rep, err := Verify(bytes.NewReader(b), opts)
	if err != nil && ExitCode(err) == ExitError {
		t.Fatalf("verify: %v", err)
	}
	return rep, err
}

func describe(rep Report) string {
	var sb strings.Builder
	_ = rep.WriteText(&sb)
	return sb.String()
}
