package audit

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

// synthBundle builds a valid bundle of n receipts without a database: the
// same writer code as Export, a tree recomputed in memory, one checkpoint.
// It also returns the PAE messages and signatures for a bare Ed25519 loop.
func synthBundle(t testing.TB, n int) (bundle []byte, pub ed25519.PublicKey, msgs, sigs [][]byte) {
	t.Helper()
	pub, sk, _ := ed25519.GenerateKey(rand.Reader)
	signer := events.NewSigner(sk)
	cpPub, cpKey, _ := ed25519.GenerateKey(rand.Reader)
	chain := audittest.NewChain("acme", signer, t0)
	var receipts bytes.Buffer
	tr, _ := newTree(0, nil)
	for range n {
		r := chain.Receipt()
		payload, envelope := chain.Next(nil)
		tr.append(tlog.RecordHash(payload))
		line, _ := json.Marshal(ReceiptLine{Seq: int64(r.Seq), ID: r.ID, Envelope: envelope})
		receipts.Write(append(line, '\n'))
		env, _ := events.ParseEnvelope(envelope)
		msgs = append(msgs, events.PAE(env.PayloadType, env.Payload))
		sigs = append(sigs, env.Signatures[0].Sig)
	}
	vkey, _ := note.NewEd25519VerifierKey("companyos-ledger", cpPub)
	name, rest, _ := strings.Cut(vkey, "+")
	hash, _, _ := strings.Cut(rest, "+")
	ns, err := note.NewSigner("PRIVATE+KEY+" + name + "+" + hash + "+" + b64(append([]byte{1}, cpKey.Seed()...)))
	if err != nil {
		t.Fatal(err)
	}
	signed, _ := note.Sign(&note.Note{Text: ledger.CheckpointText("acme", int64(n), tr.root())}, ns)
	cp, _ := json.Marshal(CheckpointLine{TreeSize: int64(n), RootHash: tr.root(), CreatedAt: time.Now().UTC(), Note: string(signed)})
	keys, _ := json.Marshal(Keys{KeySet: keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}, CheckpointVerifier: vkey})
	files := map[string][]byte{KeysFile: keys, CheckpointsFile: append(cp, '\n'), ProofsFile: []byte(`{"type":"frontier","hashes":[]}` + "\n"), ReceiptsFile: receipts.Bytes()}
	m := Manifest{Bundle: BundleInfo{Version: FormatVersion, Tenant: "acme", From: t0, To: t0.Add(time.Duration(n+1) * time.Millisecond),
		GeneratedBy: "synth", Receipts: ReceiptsFile, ReceiptCount: int64(n), FirstSeq: 1, LastSeq: int64(n),
		PolicyBundles: []PolicyBundle{{Version: "1.8.0", Hash: "sha256:0123456789ab"}}, Keys: KeysFile, Checkpoints: CheckpointsFile, Proofs: ProofsFile},
		Files: map[string]string{}}
	for name, data := range files {
		m.Files[name] = events.HashPayload(data)
	}
	mb, _ := json.Marshal(m)
	files[ManifestFile] = mb
	var out bytes.Buffer
	z, _ := newParallelGzip(&out, -1, runtime.GOMAXPROCS(0))
	tw := tar.NewWriter(z)
	for _, name := range []string{ManifestFile, KeysFile, CheckpointsFile, ProofsFile, ReceiptsFile} {
		if err := writeTarFile(tw, name, files[name], t0); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), pub, msgs, sigs
}

func bareVerify(pub ed25519.PublicKey, msgs, sigs [][]byte, workers int) {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(msgs); i += workers {
				if !ed25519.Verify(pub, msgs[i], sigs[i]) {
					panic("bad signature")
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkVerifyVsBare compares Verify with a bare parallel ed25519.Verify
// loop over the same receipts (the acceptance bar is ≥ 80%).
func BenchmarkVerifyVsBare(b *testing.B) {
	const n = 20000
	bundle, pub, msgs, sigs := synthBundle(b, n)
	workers := runtime.GOMAXPROCS(0)
	var bare, full time.Duration
	for b.Loop() {
		start := time.Now()
		bareVerify(pub, msgs, sigs, workers)
		bare += time.Since(start)
		start = time.Now()
		if _, err := Verify(bytes.NewReader(bundle), VerifyOptions{Strict: true}); err != nil {
			b.Fatal(err)
		}
		full += time.Since(start)
	}
	b.ReportMetric(float64(n*b.N)/bare.Seconds(), "bare/s")
	b.ReportMetric(float64(n*b.N)/full.Seconds(), "verify/s")
	b.ReportMetric(100*bare.Seconds()/full.Seconds(), "%of-bare")
}

func TestSynthBundleVerifies(t *testing.T) {
	bundle, _, _, _ := synthBundle(t, 500)
	if rep, err := Verify(bytes.NewReader(bundle), VerifyOptions{Strict: true}); err != nil {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}

func BenchmarkVerify(b *testing.B) {
	const n = 20000
	bundle, _, _, _ := synthBundle(b, n)
	b.SetBytes(int64(len(bundle)))
	for b.Loop() {
		if _, err := Verify(bytes.NewReader(bundle), VerifyOptions{Strict: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "receipts/s")
}
