package app_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

// getReceipt polls the provenance API until the ledger has projected id.
func (s *stack) getReceipt(id, token, query string) response {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := s.do("GET", "/v1/provenance/receipts/"+id+query, token, "")
		if r.status != 404 || time.Now().After(deadline) {
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stack) tokenWithRoles(principal string, roles []string, tenants ...string) string {
	s.t.Helper()
	tok, err := s.app.TokenIssuer.Issue(auth.IssueRequest{Principal: principal, Tenants: tenants, Roles: roles, MFA: true, TTL: time.Hour})
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

// Selective attributes never enter a signed receipt: the payload commits to
// them, the default view is redacted, ?disclose= reveals them only to
// callers the policy allows, a disclosed value verifies against its
// commitment, and shredding the subject key erases them while the receipt
// still verifies.
func TestSelectiveDisclosureEndToEnd(t *testing.T) {
	s := startStack(t, func(c *app.Config) { c.SelectiveAttrs = []string{"email"} })
	body := `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"user:alice","kind":"user",` +
		`"attrs":{"email":"alice@example.com","salary":123456,"region":"eu"},"selective":["salary"]}}`
	r := s.do("POST", "/v1/commands", s.admin, body, "Idempotency-Key", "alice-1")
	expect(t, r, 201, "")
	id := r.body["receipt_id"].(string)

	// A retry of the same command is the same command (salts are derived,
	// not random), so it is answered from state, not refused as a reuse.
	again := s.do("POST", "/v1/commands", s.admin, body, "Idempotency-Key", "alice-1")
	expect(t, again, 201, "")
	if again.body["receipt_id"] != id || again.body["replayed"] != true {
		t.Fatalf("retry answered %v, want %s", again.body["receipt_id"], id)
	}

	// Default view: redacted. Neither value appears in the envelope.
	r = s.getReceipt(id, s.admin, "")
	expect(t, r, 200, "")
	var got ledger.ReceiptResponse
	if err := json.Unmarshal(r.raw, &got); err != nil {
		t.Fatal(err)
	}
	env, err := events.ParseEnvelope(got.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"alice@example.com", "123456"} {
		if strings.Contains(string(env.Payload), secret) || strings.Contains(string(r.raw), secret) {
			t.Fatalf("selective value %q leaked into the receipt: %s", secret, env.Payload)
		}
	}
	rc, err := events.ParseReceipt(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.Selective) != 2 || !strings.HasPrefix(rc.Selective["email"], "sha256:") || !strings.HasPrefix(rc.Selective["salary"], "sha256:") {
		t.Fatalf("selective commitments %v, want email and salary", rc.Selective)
	}
	if !strings.Contains(string(rc.Command), `"email":{"$selective":"`+rc.Selective["email"]+`"}`) {
		t.Fatalf("command does not carry the commitment reference: %s", rc.Command)
	}
	if string(got.Redactions) != `["email","salary"]` {
		t.Fatalf("redactions %s", got.Redactions)
	}

	// Disclosure is a policy decision: a reader without an auditor role is
	// refused (403 with rationale); an auditor gets values that verify.
	reader := s.tokenWithRoles("user:bob", nil, "pilot-1")
	denied := s.getReceipt(id, reader, "?disclose=email")
	expect(t, denied, 403, "policy-denied")
	if denied.body["rationale"] == nil {
		t.Fatalf("denial without rationale: %s", denied.raw)
	}
	expect(t, s.getReceipt(id, reader, "?disclose=region"), 422, "validation")
	// Disclosure is a step-up action: without a fresh MFA login, a 401
	// challenge (RFC 9470) comes before any policy decision.
	stale := s.token("user:carol", "pilot-1")
	ch := s.getReceipt(id, stale, "?disclose=email")
	expect(t, ch, 401, "step-up-required")
	if h := ch.header.Get("WWW-Authenticate"); !strings.Contains(h, `error="insufficient_user_authentication"`) || !strings.Contains(h, "max_age=") {
		t.Fatalf("WWW-Authenticate %q", h)
	}

	auditor := s.tokenWithRoles("user:carol", []string{"auditor"}, "pilot-1")
	r = s.getReceipt(id, auditor, "?disclose=email,salary")
	expect(t, r, 200, "")
	got = ledger.ReceiptResponse{}
	if err := json.Unmarshal(r.raw, &got); err != nil {
		t.Fatal(err)
	}
	values := map[string]string{}
	for _, d := range got.Disclosed {
		if err := events.VerifyDisclosure(rc, d); err != nil {
			t.Fatalf("disclosed %s does not verify: %v", d.Field, err)
		}
		values[d.Field] = string(d.Value)
		// A changed value does not match its commitment.
		forged := d
		forged.Value = json.RawMessage(`"mallory@example.com"`)
		if err := events.VerifyDisclosure(rc, forged); err == nil {
			t.Fatalf("forged %s verified", d.Field)
		}
	}
	if values["email"] != `"alice@example.com"` || values["salary"] != "123456" {
		t.Fatalf("disclosed %v", values)
	}

	// Crypto-shredding: destroy the subject key; the values are gone, the
	// receipt still verifies.
	pool, err := pgxpool.New(context.Background(), s.pgDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(context.Background(), `UPDATE subject_keys SET wrapped_key = NULL, shredded_at = now(), shredded_by = 'test'
		WHERE tenant = 'pilot-1' AND subject = 'user:alice'`); err != nil {
		t.Fatal(err)
	}
	r = s.getReceipt(id, auditor, "?disclose=email,salary")
	expect(t, r, 200, "")
	got = ledger.ReceiptResponse{}
	if err := json.Unmarshal(r.raw, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Disclosed) != 0 || strings.Join(got.Erased, ",") != "email,salary" {
		t.Fatalf("after shredding: disclosed %v erased %v, want nothing disclosed, both erased", got.Disclosed, got.Erased)
	}
	env, err = events.ParseEnvelope(got.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Verify(s.receiptKeys()); err != nil {
		t.Fatalf("receipt no longer verifies after shredding: %v", err)
	}
}

func (s *stack) receiptKeys() keyfile.KeySet {
	s.t.Helper()
	r := s.do("GET", "/v1/keys", "", "")
	var ks keyfile.KeySet
	if err := json.Unmarshal(r.raw, &ks); err != nil {
		s.t.Fatal(err)
	}
	return ks
}

func authRequest(principal string, roles []string, mfa bool, tenants []string) auth.IssueRequest {
	return auth.IssueRequest{Principal: principal, Tenants: tenants, Roles: roles, MFA: mfa, TTL: time.Hour}
}
