package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/ledger"
)

// envelopeOf decodes a receipt line's envelope.
func envelopeOf(t testing.TB, r ReceiptLine) events.Envelope {
	env, err := events.ParseEnvelope(r.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func setEnvelope(t testing.TB, r *ReceiptLine, env events.Envelope) {
	v, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	r.Envelope = v
}

// flipPayload changes one byte of the signed payload (in the actor, so the
// JSON stays valid) and keeps the old signature.
func flipPayload(t testing.TB, r *ReceiptLine) {
	env := envelopeOf(t, *r)
	i := bytes.Index(env.Payload, []byte(`"actor":"user:u`)) + len(`"actor":"user:`)
	env.Payload = slices.Clone(env.Payload)
	env.Payload[i] = 'v'
	setEnvelope(t, r, env)
}

// rechain re-signs rs[from:] so that seq and prev_hash form a valid chain
// again after an insertion or removal: the insider forgery only the Merkle
// checkpoints (signed with another key) can expose.
func rechain(t testing.TB, s *events.Signer, rs []ReceiptLine, from int) {
	for i := from; i < len(rs); i++ {
		rec := payloadOf(t, rs[i])
		rec.Seq = uint64(i + 1)
		prevEnv := envelopeOf(t, rs[i-1])
		rec.PrevHash = events.HashPayload(prevEnv.Payload)
		resign(t, s, &rs[i], rec)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// signNote signs a checkpoint text with the ledger's real key.
func signNote(t testing.TB, e *env, text string) string {
	vkey := e.ledger.VerifierKey()
	name, rest, _ := strings.Cut(vkey, "+")
	hash, _, _ := strings.Cut(rest, "+")
	skey := fmt.Sprintf("PRIVATE+KEY+%s+%s+%s", name, hash, b64(append([]byte{1}, e.cpKey.Seed()...)))
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return string(msg)
}

func TestTamperMatrix(t *testing.T) {
	e, orig := standard(t)
	type tamper struct {
		name string
		// want is the code that decides the exit code; also lists codes
		// that must be reported too, and whether the report must hold
		// nothing else.
		want  Code
		also  []Code
		only  bool
		apply func(t *testing.T, b *bundle) []byte
	}
	editReceipts := func(fix bool, fn func(t *testing.T, rs []ReceiptLine) []ReceiptLine) func(*testing.T, *bundle) []byte {
		return func(t *testing.T, b *bundle) []byte {
			b.setReceipts(t, fn(t, b.receipts(t)))
			return b.bytes(t, fix)
		}
	}
	cases := []tamper{
		{name: "payload byte", want: CodeSignature, also: []Code{CodeChain, CodeInclusion},
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { flipPayload(t, &rs[14]); return rs })},
		{name: "payload byte, re-signed by an insider", want: CodeChain, also: []Code{CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[14])
				rec.Actor = "user:mallory"
				resign(t, e.signer, &rs[14], rec)
				return rs
			})},
		{name: "last payload, re-signed by an insider", want: CodeInclusion, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[29])
				rec.Decision = events.DecisionAllow
				rec.Actor = "user:mallory"
				resign(t, e.signer, &rs[29], rec)
				return rs
			})},
		{name: "prev_hash byte", want: CodeSignature, also: []Code{CodeChain},
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				env := envelopeOf(t, rs[9])
				env.Payload = bytes.Replace(env.Payload, []byte(`"prev_hash":"sha256:`), []byte(`"prev_hash":"sha256:f`), 1)
				setEnvelope(t, &rs[9], env)
				return rs
			})},
		{name: "prev_hash byte, re-signed", want: CodeChain, also: []Code{CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[9])
				h := []byte(rec.PrevHash)
				h[len(h)-1] ^= 1
				rec.PrevHash = string(h)
				resign(t, e.signer, &rs[9], rec)
				return rs
			})},
		{name: "seq byte", want: CodeSignature, also: []Code{CodePayload},
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				env := envelopeOf(t, rs[14])
				env.Payload = bytes.Replace(env.Payload, []byte(`"seq":15,`), []byte(`"seq":19,`), 1)
				setEnvelope(t, &rs[14], env)
				return rs
			})},
		{name: "seq byte, re-signed", want: CodeSeqGap, also: []Code{CodeSeqDuplicate, CodeSeqReorder, CodeChain, CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[14])
				rec.Seq = 19
				resign(t, e.signer, &rs[14], rec)
				return rs
			})},
		{name: "line seq only", want: CodePayload, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { rs[4].Seq = 40; rs[4].ID = "rcpt_x"; return rs })},
		{name: "payload not a receipt, re-signed", want: CodePayload, also: []Code{CodeChain, CodeInclusion},
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				env := e.signer.Sign([]byte(`{"id":"rcpt_x","seq":"five"}`))
				setEnvelope(t, &rs[4], env)
				return rs
			})},
		{name: "tenant, re-signed", want: CodeTenant, also: []Code{CodeChain, CodeInclusion},
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[4])
				rec.Tenant = "globex"
				resign(t, e.signer, &rs[4], rec)
				return rs
			})},
		{name: "signature byte", want: CodeSignature, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				env := envelopeOf(t, rs[20])
				env.Signatures[0].Sig = slices.Clone(env.Signatures[0].Sig)
				env.Signatures[0].Sig[7] ^= 0x10
				setEnvelope(t, &rs[20], env)
				return rs
			})},
		{name: "keyid byte", want: CodeUnknownKey, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				env := envelopeOf(t, rs[3])
				k := []byte(env.Signatures[0].KeyID)
				k[len(k)-1] ^= 1
				env.Signatures[0].KeyID = string(k)
				setEnvelope(t, &rs[3], env)
				return rs
			})},
		{name: "deleted receipt", want: CodeSeqGap, also: []Code{CodeChain, CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { return slices.Delete(rs, 11, 12) })},
		{name: "duplicated receipt", want: CodeSeqDuplicate, also: []Code{CodeChain, CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { return slices.Insert(rs, 12, rs[11]) })},
		{name: "reordered receipts", want: CodeSeqReorder, also: []Code{CodeChain, CodeInclusion}, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { rs[10], rs[11] = rs[11], rs[10]; return rs })},
		{name: "inserted receipt, chain rebuilt by an insider", want: CodeInclusion, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rec := payloadOf(t, rs[14])
				rec.ID, rec.Actor, rec.CommandID = "rcpt_forged", "user:mallory", "cmd_forged"
				var forged ReceiptLine
				resign(t, e.signer, &forged, rec)
				rs = slices.Insert(rs, 15, forged)
				rechain(t, e.signer, rs, 15)
				return rs
			})},
		{name: "removed receipt, chain rebuilt by an insider", want: CodeInclusion, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				rs = slices.Delete(rs, 3, 4)
				rechain(t, e.signer, rs, 3)
				return rs
			})},
		{name: "checkpoint rolled back", want: CodeCheckpointRollback, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				ls := b.lines(CheckpointsFile)
				b.setLines(CheckpointsFile, append(ls, ls[0]))
				return b.bytes(t, true)
			}},
		{name: "checkpoint forked", want: CodeCheckpointFork, also: []Code{CodeConsistency, CodeInclusion}, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				root := tlog.Hash(sha256.Sum256([]byte("another history")))
				forged, err := json.Marshal(CheckpointLine{TreeSize: 20, RootHash: root, CreatedAt: t0, Note: signNote(t, e, ledger.CheckpointText("acme", 20, root))})
				if err != nil {
					t.Fatal(err)
				}
				ls := b.lines(CheckpointsFile)
				b.setLines(CheckpointsFile, slices.Insert(ls, 2, forged))
				return b.bytes(t, true)
			}},
		{name: "consistency proof", want: CodeConsistency, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				ls := b.lines(ProofsFile)
				var p ProofLine
				if err := json.Unmarshal(ls[1], &p); err != nil {
					t.Fatal(err)
				}
				p.Hashes[0][0] ^= 1
				ls[1], _ = json.Marshal(p)
				b.setLines(ProofsFile, ls)
				return b.bytes(t, true)
			}},
		{name: "checkpoint signature", want: CodeCheckpointSignature, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				ls := b.lines(CheckpointsFile)
				ls[0] = bytes.Replace(ls[0], []byte(`\n10\n`), []byte(`\n11\n`), 1)
				b.setLines(CheckpointsFile, ls)
				return b.bytes(t, true)
			}},
		{name: "checkpoint of another tenant", want: CodeTenant, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				root := tlog.Hash{1}
				other, _ := json.Marshal(CheckpointLine{TreeSize: 3, RootHash: root, CreatedAt: t0, Note: signNote(t, e, ledger.CheckpointText("globex", 3, root))})
				b.setLines(CheckpointsFile, append([][]byte{other}, b.lines(CheckpointsFile)...))
				return b.bytes(t, true)
			}},
		{name: "manifest hash", want: CodeManifestHash, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				b.set(ManifestFile, bytes.Replace(b.get(ManifestFile), []byte(`"keys.json": "sha256:`), []byte(`"keys.json": "sha256:0`), 1))
				return b.bytes(t, false)
			}},
		{name: "receipts changed, manifest not updated", want: CodeManifestHash,
			apply: editReceipts(false, func(t *testing.T, rs []ReceiptLine) []ReceiptLine { return rs[:29] })},
		{name: "not gzip", want: CodeMalformed, only: true,
			apply: func(t *testing.T, b *bundle) []byte { return []byte("PK\x03\x04 this is a zip") }},
		{name: "truncated", want: CodeMalformed,
			apply: func(t *testing.T, b *bundle) []byte { return orig[:len(orig)/2] }},
		{name: "manifest not first", want: CodeMalformed, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				b.files[0], b.files[1] = b.files[1], b.files[0]
				return b.bytes(t, false)
			}},
		{name: "a line longer than a read batch", want: CodeDisclosure, only: true,
			apply: editReceipts(true, func(t *testing.T, rs []ReceiptLine) []ReceiptLine {
				big, _ := json.Marshal(strings.Repeat("x", 3*batchBytes))
				rs[2].Disclosures = []events.Disclosure{{Field: "notes", Salt: make([]byte, events.SaltSize), Value: big}}
				return rs
			})},
		{name: "evidence", want: CodeEvidence, only: true,
			apply: func(t *testing.T, b *bundle) []byte {
				rec := payloadOf(t, b.receipts(t)[2])
				b.set(EvidenceDir+strings.TrimPrefix(rec.EvidenceHash, "sha256:"), []byte(`{"type":"entity.delete"}`))
				return b.bytes(t, true)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.apply(t, openBundle(t, orig))
			rep, err := verifyBytes(t, data, VerifyOptions{})
			if err == nil {
				t.Fatalf("tampered bundle verified:\n%s", describe(rep))
			}
			var f *Failure
			if !errors.As(err, &f) || f.Problems[0].Code != c.want || ExitCode(err) != c.want.ExitCode() || rep.ExitCode != c.want.ExitCode() || !errors.Is(err, c.want) {
				t.Fatalf("want %s (exit %d), got exit %d: %v\n%s", c.want, c.want.ExitCode(), ExitCode(err), err, describe(rep))
			}
			t.Log("\n" + describe(rep))
			for _, code := range c.also {
				if rep.Counts[code] == 0 {
					t.Errorf("%s not reported\n%s", code, describe(rep))
				}
			}
			if c.only {
				for code, n := range rep.Counts {
					if code != c.want && !slices.Contains(c.also, code) && n > 0 && !code.IsWarning() {
						t.Errorf("unexpected %s (%d)\n%s", code, n, describe(rep))
					}
				}
			}
		})
	}
}

func TestStrictWarnings(t *testing.T) {
	_, orig := standard(t)
	b := openBundle(t, orig)
	b.set("notes.txt", []byte("not in the manifest"))
	data := b.bytes(t, false)
	if rep, err := verifyBytes(t, data, VerifyOptions{}); err != nil || rep.Counts[CodeExtraFile] != 1 {
		t.Fatalf("lenient: %v\n%s", err, describe(rep))
	}
	rep, err := verifyBytes(t, data, VerifyOptions{Strict: true})
	if ExitCode(err) != ExitStrictWarning || !errors.Is(err, CodeExtraFile) {
		t.Fatalf("strict: %v\n%s", err, describe(rep))
	}
}

func TestPartialRange(t *testing.T) {
	e, _ := standard(t)
	// seq 5…25: a frontier of 4 leaves, checkpoints 10 and 20 inside, and
	// a proof from the exported tree (25) to the final checkpoint (30).
	b, res := e.export("acme", t0.Add(4*time.Minute), t0.Add(25*time.Minute), nil)
	if res.FirstSeq != 5 || res.LastSeq != 25 || res.Checkpoints != 3 {
		t.Fatalf("export: %+v", res)
	}
	rep, err := verifyBytes(t, b, VerifyOptions{Strict: true})
	if err != nil || rep.FirstSeq != 5 || rep.LastSeq != 25 || rep.TreeSize != 30 || !strings.HasPrefix(rep.Anchor, "sha256:") || rep.Anchor == events.GenesisHash {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	// Dropping the first receipt leaves the frontier one leaf short.
	bb := openBundle(t, b)
	bb.setReceipts(t, bb.receipts(t)[1:])
	rep, err = verifyBytes(t, bb.bytes(t, true), VerifyOptions{})
	if ExitCode(err) != 14 || rep.Counts[CodeSeqGap] == 0 || rep.Counts[CodeInclusion] == 0 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}

func TestExportSignsMissingCheckpoint(t *testing.T) {
	e := newEnv(t)
	e.produce("acme", 12, nil)
	e.project()
	e.produce("acme", 5, nil)
	e.project()
	// The projector signs on shutdown; forget its last two checkpoints.
	if _, err := e.pool.Exec(e.ctx, "DELETE FROM checkpoints WHERE tenant = 'acme' AND tree_size > 12"); err != nil {
		t.Fatal(err)
	}
	b, res := e.export("acme", t0, t0.Add(time.Hour), nil)
	if !res.SignedCheckpoint || res.TreeSize != 17 || res.Checkpoints != 2 {
		t.Fatalf("export: %+v", res)
	}
	if rep, err := verifyBytes(t, b, VerifyOptions{Strict: true}); err != nil {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}

func TestPinnedKeys(t *testing.T) {
	e, b := standard(t)
	ks := e.keys()
	if rep, err := verifyBytes(t, b, VerifyOptions{TrustedKeys: &ks, TrustedCheckpointKey: e.ledger.VerifierKey()}); err != nil || !rep.Keys.Pinned || !rep.Keys.CheckpointPinned {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	other := newEnv(t)
	oks := other.keys()
	rep, err := verifyBytes(t, b, VerifyOptions{TrustedKeys: &oks})
	if ExitCode(err) != CodeUnknownKey.ExitCode() || rep.Counts[CodeUnknownKey] != 30 || len(rep.Problems) != 20 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	rep, err = verifyBytes(t, b, VerifyOptions{TrustedCheckpointKey: other.ledger.VerifierKey()})
	if ExitCode(err) != CodeCheckpointSignature.ExitCode() || rep.Counts[CodeCheckpointSignature] != 3 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}

func TestDisclosures(t *testing.T) {
	e := newEnv(t)
	salt := bytes.Repeat([]byte{7}, events.SaltSize)
	value := []byte(`"alice@example.com"`)
	e.produce("acme", 6, func(r *events.Receipt) {
		if r.Seq%2 == 0 {
			r.Selective = map[string]string{"email": events.Commit("email", salt, value)}
		}
	})
	e.project()
	disclose := func(bad string) func(ctx context.Context, r *ledger.ExportRow) ([]events.Disclosure, error) {
		return func(_ context.Context, r *ledger.ExportRow) ([]events.Disclosure, error) {
			if r.Seq%2 != 0 {
				return nil, nil
			}
			v := value
			if r.Seq == 4 && bad != "" {
				v = []byte(bad)
			}
			return []events.Disclosure{{Field: "email", Salt: salt, Value: v}}, nil
		}
	}
	b, res := e.export("acme", t0, t0.Add(time.Hour), func(c *ExportConfig) { c.Disclose = disclose("") })
	if res.Disclosures != 3 {
		t.Fatalf("export: %+v", res)
	}
	rep, err := verifyBytes(t, b, VerifyOptions{Strict: true})
	if err != nil || rep.Disclosures != 3 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	// The exporter discloses a value the receipt never committed to.
	b, _ = e.export("acme", t0, t0.Add(time.Hour), func(c *ExportConfig) { c.Disclose = disclose(`"mallory@example.com"`) })
	rep, err = verifyBytes(t, b, VerifyOptions{})
	if ExitCode(err) != 19 || rep.Counts[CodeDisclosure] != 1 || rep.Problems[0].Seq != 4 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	// The same, by editing the bundle; and a disclosure of a field the
	// receipt has no commitment for.
	bb := openBundle(t, b)
	rs := bb.receipts(t)
	rs[5].Disclosures[0].Salt = bytes.Repeat([]byte{8}, events.SaltSize)
	rs[0].Disclosures = []events.Disclosure{{Field: "phone", Salt: salt, Value: []byte(`"555"`)}}
	bb.setReceipts(t, rs)
	rep, err = verifyBytes(t, bb.bytes(t, true), VerifyOptions{})
	if ExitCode(err) != 19 || rep.Counts[CodeDisclosure] != 3 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}

func TestEvidence(t *testing.T) {
	e := newEnv(t)
	e.produce("acme", 4, nil)
	e.project()
	// An evidence store that has the command bytes of receipts 1 and 3.
	store := map[string][]byte{}
	for seq := uint64(1); seq <= 3; seq += 2 {
		cmd := audittest.Build("acme", seq, "", t0).Command
		store[events.EvidenceHash(cmd)] = cmd
	}
	b, res := e.export("acme", t0, t0.Add(time.Hour), func(c *ExportConfig) {
		c.Evidence = func(_ context.Context, h string) ([]byte, bool, error) { d, ok := store[h]; return d, ok, nil }
	})
	if res.EvidenceFiles != 2 {
		t.Fatalf("export: %+v", res)
	}
	rep, err := verifyBytes(t, b, VerifyOptions{Strict: true})
	if err != nil || rep.EvidenceFiles != 2 {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
}
