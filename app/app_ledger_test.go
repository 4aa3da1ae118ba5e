package app_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/ledger"
)

// The ledger projects live receipts, and a receipt's inclusion proof
// verifies against a signed checkpoint, offline.
func TestProvenanceLedgerEndToEnd(t *testing.T) {
	s := startStack(t, nil)
	var last string
	for i := range 5 {
		r := s.do("POST", "/v1/commands", s.admin, fmt.Sprintf(`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"svc:L%d","kind":"service","attrs":{}}}`, i))
		expect(t, r, 201, "")
		last = r.body["receipt_id"].(string)
	}
	var got ledger.ReceiptResponse
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := s.do("GET", "/v1/provenance/receipts/"+last, s.admin, "")
		if r.status == 200 {
			if err := json.Unmarshal(r.raw, &got); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("receipt never reached the ledger: %d %s", r.status, r.raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got.Seq != 5 || got.Tenant != "pilot-1" {
		t.Fatalf("receipt %+v", got)
	}
	v, err := note.NewVerifier(got.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open([]byte(got.Checkpoint.Note), note.VerifierList(v))
	if err != nil {
		t.Fatal(err)
	}
	_, size, root, err := ledger.ParseCheckpointText(n.Text)
	if err != nil {
		t.Fatal(err)
	}
	env, err := events.ParseEnvelope(got.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckRecord(got.Inclusion.Hashes, size, root, got.Inclusion.LeafIndex, tlog.RecordHash(env.Payload)); err != nil {
		t.Fatal(err)
	}
	// Another tenant's token sees nothing.
	if r := s.do("GET", "/v1/provenance/receipts/"+last, s.token("user:eve", "other"), ""); r.status != 404 {
		t.Fatalf("cross-tenant: %d", r.status)
	}
}
