package audit

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	mrand "math/rand/v2"
	"reflect"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
)

// TestTreeMatchesTlog checks the frontier tree against tlog for every split
// of every size up to 130: resuming from tlog's stored hashes and appending
// the rest gives tlog.TreeHash, and the stored-hash frontier is read at
// frontierIndexes.
func TestTreeMatchesTlog(t *testing.T) {
	var stored []tlog.Hash
	read := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	var leaves []tlog.Hash
	for n := int64(0); n < 130; n++ {
		data := []byte{byte(n), byte(n >> 8)}
		hs, err := tlog.StoredHashes(n, data, read)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
		leaves = append(leaves, tlog.RecordHash(data))
		size := n + 1
		want, _ := tlog.TreeHash(size, read)
		for a0 := int64(0); a0 <= size; a0++ {
			var frontier []tlog.Hash
			for _, idx := range frontierIndexes(a0) {
				frontier = append(frontier, stored[idx])
			}
			tr, err := newTree(a0, frontier)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range leaves[a0:] {
				tr.append(l)
			}
			if got := tr.root(); got != want {
				t.Fatalf("size %d resumed at %d: root %s, tlog %s", size, a0, got, want)
			}
		}
	}
	if _, err := newTree(5, nil); err == nil {
		t.Fatal("a tree of 5 leaves needs 2 frontier hashes")
	}
}

// TestParallelGzipDeterministic: the output depends on the bytes only, not
// on the number of workers or how writes are split, and is one valid
// multi-member gzip stream.
func TestParallelGzipDeterministic(t *testing.T) {
	data := make([]byte, 3*memberSize+12345)
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := range data {
		data[i] = "abcdefgh"[r.IntN(8)]
	}
	var outs [][]byte
	for _, workers := range []int{1, 2, 7} {
		var buf bytes.Buffer
		z, err := newParallelGzip(&buf, 6, workers)
		if err != nil {
			t.Fatal(err)
		}
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(200000))
			z.Write(rest[:n])
			rest = rest[n:]
		}
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, buf.Bytes())
	}
	for _, o := range outs[1:] {
		if !bytes.Equal(o, outs[0]) {
			t.Fatal("output depends on workers or write sizes")
		}
	}
	gz, err := gzip.NewReader(bytes.NewReader(outs[0]))
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(gz)
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("round trip: %v", err)
	}
	var empty bytes.Buffer
	z, _ := newParallelGzip(&empty, 6, 2)
	if err := z.Close(); err != nil || empty.Len() == 0 {
		t.Fatalf("an empty stream must still be a gzip file: %v", err)
	}
}

func sampleLine(t testing.TB) (line, payload []byte) {
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	c := audittest.NewChain("acme", events.NewSigner(sk), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c.Next(nil)
	r := c.Receipt()
	payload, env := c.Next(nil)
	line, err := json.Marshal(ReceiptLine{Seq: int64(r.Seq), ID: r.ID, Envelope: env})
	if err != nil {
		t.Fatal(err)
	}
	return line, payload
}

func TestFastPathsTaken(t *testing.T) {
	line, payload := sampleLine(t)
	var p parsedLine
	arena := make([]byte, 0, len(line))
	if _, err := parseLineFast(line, &p, arena); err != nil {
		t.Fatal("a line as Export writes it must take the fast path")
	}
	var r slimReceipt
	if !parsePayloadFast(payload, &r) {
		t.Fatal("a payload as MarshalReceipt writes it must take the fast path")
	}
}

// referenceLine and referencePayload decode with encoding/json only.
func referenceLine(line []byte) (parsedLine, error) {
	var l lineJSON
	if err := json.Unmarshal(line, &l); err != nil {
		return parsedLine{}, err
	}
	p := parsedLine{seq: l.Seq, id: []byte(l.ID), payloadType: []byte(l.Envelope.PayloadType), payload: l.Envelope.Payload, disclosures: l.Disclosures}
	for _, s := range l.Envelope.Signatures {
		p.sigs = append(p.sigs, parsedSig{keyID: []byte(s.KeyID), sig: s.Sig})
	}
	return p, nil
}

func referencePayload(b []byte) (slimReceipt, error) {
	full, err := events.ParseReceipt(b)
	if err != nil {
		return slimReceipt{}, err
	}
	return slimReceipt{id: []byte(full.ID), tenant: []byte(full.Tenant), evidenceHash: []byte(full.EvidenceHash), policyVersion: []byte(full.PolicyVersion),
		prevHash: []byte(full.PrevHash), createdAt: full.CreatedAt, selective: full.Selective, seq: full.Seq}, nil
}

func normLine(p parsedLine) parsedLine {
	n := parsedLine{seq: p.seq, id: bytes.Clone(p.id), payloadType: bytes.Clone(p.payloadType), payload: bytes.Clone(p.payload), disclosures: p.disclosures}
	for _, s := range p.sigs {
		n.sigs = append(n.sigs, parsedSig{keyID: bytes.Clone(s.keyID), sig: bytes.Clone(s.sig)})
	}
	if n.sigs == nil {
		n.sigs = []parsedSig{}
	}
	return n
}

func normPayload(r slimReceipt) slimReceipt {
	r.id, r.tenant, r.evidenceHash, r.policyVersion, r.prevHash = bytes.Clone(r.id), bytes.Clone(r.tenant), bytes.Clone(r.evidenceHash), bytes.Clone(r.policyVersion), bytes.Clone(r.prevHash)
	if r.selective == nil {
		r.selective = map[string]string{}
	}
	return r
}

// FuzzFastPaths is the differential test: whenever a fast path accepts an
// input, encoding/json must accept it too and decode the same values.
func FuzzFastPaths(f *testing.F) {
	line, payload := sampleLine(f)
	f.Add(line)
	f.Add(payload)
	f.Add([]byte(`{"id":"a","action":"b","actor":"c","tenant":"t","decision":"allow","evidence_hash":"e","policy_version":"p","created_at":"2026-01-01T00:00:00Z","selective":{"k":"v"},"seq":1,"prev_hash":"h","command_id":"c","rationale":[{"a":[1,2.5e3,-0,"\u00e9\n"]}],"obligations":[],"subject":"s","command":{"x":null},"change":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p parsedLine
		arena := make([]byte, 0, len(b))
		if _, err := parseLineFast(b, &p, arena); err == nil {
			want, err := referenceLine(b)
			if err != nil {
				t.Fatalf("fast path accepted a line encoding/json rejects (%v): %q", err, b)
			}
			if got := normLine(p); !reflect.DeepEqual(got, normLine(want)) {
				t.Fatalf("line decoded differently:\nfast %+v\njson %+v\n%q", got, want, b)
			}
		}
		var r slimReceipt
		if parsePayloadFast(b, &r) {
			want, err := referencePayload(b)
			if err != nil {
				t.Fatalf("fast path accepted a payload encoding/json rejects (%v): %q", err, b)
			}
			if got := normPayload(r); !reflect.DeepEqual(got, normPayload(want)) {
				t.Fatalf("payload decoded differently:\nfast %+v\njson %+v\n%q", got, want, b)
			}
		}
	})
}
