package events

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/internal/keyfile"
)

func newSigner(t testing.TB) (*Signer, keyfile.KeySet) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSigner(k)
	return s, keyfile.KeySet{Keys: []keyfile.PublicKey{s.Public()}}
}

func sampleReceipt(seq uint64, prev string) Receipt {
	return Receipt{
		ID: "rcpt_1", Action: "entity.create", Actor: "user:admin", Tenant: "pilot-1", Decision: DecisionAllow,
		EvidenceHash: HashPayload([]byte("cmd")), PolicyVersion: "0.1.0+sha256:abc", CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Selective: map[string]string{}, Seq: seq, PrevHash: prev, CommandID: "cmd_1",
		Rationale: json.RawMessage(`[]`), Obligations: json.RawMessage(`[]`), Subject: "svc:A",
		Command: json.RawMessage(`{"type":"entity.create"}`), Change: json.RawMessage(`null`),
	}
}

func TestPAE(t *testing.T) {
	got := string(PAE("a/b", []byte("hello")))
	if want := "DSSEv1 3 a/b 5 hello"; got != want {
		t.Fatalf("PAE = %q, want %q", got, want)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	s, keys := newSigner(t)
	payload, err := MarshalReceipt(sampleReceipt(1, GenesisHash))
	if err != nil {
		t.Fatal(err)
	}
	env := s.Sign(payload)
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The wire form is the documented DSSE JSON.
	var wire map[string]any
	if err := json.Unmarshal(raw, &wire); err != nil {
		t.Fatal(err)
	}
	if wire["payloadType"] != PayloadType {
		t.Fatalf("payloadType = %v", wire["payloadType"])
	}
	back, err := ParseEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Verify(keys); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !bytes.Equal(back.Payload, payload) {
		t.Fatal("payload bytes changed in transit")
	}
}

// Every kind of tampering is detected: the signature covers the exact bytes.
func TestTamperingDetected(t *testing.T) {
	s, keys := newSigner(t)
	_, otherKeys := newSigner(t)
	payload, _ := MarshalReceipt(sampleReceipt(7, HashPayload([]byte("prev"))))
	good := s.Sign(payload)

	mutate := func(f func(e *Envelope)) Envelope {
		e := Envelope{PayloadType: good.PayloadType, Payload: bytes.Clone(good.Payload),
			Signatures: []Signature{{KeyID: good.Signatures[0].KeyID, Sig: bytes.Clone(good.Signatures[0].Sig)}}}
		f(&e)
		return e
	}
	replace := func(old, new string) func(e *Envelope) {
		return func(e *Envelope) {
			if !bytes.Contains(e.Payload, []byte(old)) {
				t.Fatalf("payload lacks %q", old)
			}
			e.Payload = bytes.Replace(e.Payload, []byte(old), []byte(new), 1)
		}
	}
	cases := []struct {
		name string
		env  Envelope
		keys keyfile.KeySet
		want error
	}{
		{"seq", mutate(replace(`"seq":7`, `"seq":8`)), keys, ErrBadSignature},
		{"prev_hash", mutate(replace(HashPayload([]byte("prev"))[10:20], "0000000000")), keys, ErrBadSignature},
		{"decision", mutate(replace(`"allow"`, `"deny"`)), keys, ErrBadSignature},
		{"signature", mutate(func(e *Envelope) { e.Signatures[0].Sig[5] ^= 1 }), keys, ErrBadSignature},
		{"keyid", mutate(func(e *Envelope) { e.Signatures[0].KeyID = "ed25519:00000000000000000000000000000000" }), keys, ErrUnknownKey},
		{"other key set", mutate(func(*Envelope) {}), otherKeys, ErrUnknownKey},
		{"payloadType", mutate(func(e *Envelope) { e.PayloadType = "application/json" }), keys, ErrBadEnvelope},
		{"no signatures", mutate(func(e *Envelope) { e.Signatures = nil }), keys, ErrUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.env.Verify(tc.keys)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	// Flipping any single payload byte breaks the signature.
	for i := range good.Payload {
		e := mutate(func(e *Envelope) { e.Payload[i] ^= 0x01 })
		if err := e.Verify(keys); err == nil {
			t.Fatalf("flipping payload byte %d went undetected", i)
		}
	}
}

func TestChain(t *testing.T) {
	c := NewChain()
	var payloads [][]byte
	prev := GenesisHash
	for seq := uint64(1); seq <= 3; seq++ {
		p, _ := MarshalReceipt(sampleReceipt(seq, prev))
		r, _ := ParseReceipt(p)
		if err := c.Append(r, p); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		payloads = append(payloads, p)
		prev = HashPayload(p)
	}
	if c.Seq != 3 || c.Head != HashPayload(payloads[2]) {
		t.Fatalf("chain head = %+v", c)
	}
	for _, tc := range []struct {
		name string
		r    Receipt
	}{
		{"gap", sampleReceipt(5, c.Head)},
		{"replay", sampleReceipt(3, c.Head)},
		{"fork", sampleReceipt(4, HashPayload(payloads[1]))},
	} {
		p, _ := MarshalReceipt(tc.r)
		cc := c
		if err := cc.Append(tc.r, p); !errors.Is(err, ErrChainBroken) {
			t.Errorf("%s: Append = %v, want ErrChainBroken", tc.name, err)
		}
	}
}

func TestMarshalReceiptIsPlainJSON(t *testing.T) {
	r := sampleReceipt(1, GenesisHash)
	r.Subject = "svc:<a&b>"
	p, err := MarshalReceipt(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(p), `"subject":"svc:<a&b>"`) || bytes.HasSuffix(p, []byte("\n")) {
		t.Fatalf("payload = %s", p)
	}
	if !strings.HasPrefix(GenesisHash, "sha256:") || len(GenesisHash) != 7+64 {
		t.Fatal("genesis hash format")
	}
}

func TestConsistencyToken(t *testing.T) {
	tok := ConsistencyToken("pilot-1", 42)
	tenant, seq, err := ParseConsistencyToken(tok)
	if err != nil || tenant != "pilot-1" || seq != 42 {
		t.Fatalf("round trip = %q %d %v", tenant, seq, err)
	}
	for _, bad := range []string{"", "!!", "Zm9v", ConsistencyToken("x", 1) + "A"} {
		if _, _, err := ParseConsistencyToken(bad); err == nil {
			t.Errorf("ParseConsistencyToken(%q) accepted", bad)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	s, _ := newSigner(b)
	payload, _ := MarshalReceipt(sampleReceipt(1, GenesisHash))
	b.ReportAllocs()
	for b.Loop() {
		s.Sign(payload)
	}
}
