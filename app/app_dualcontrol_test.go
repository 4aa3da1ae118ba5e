package app_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/evidence"
	"github.com/companyos/companyos/projections/ledger"
)

// The seed's story: alice asks whether she may delete dataset:prod and is
// told "deny — needs MFA and two approvers" with the rules and attributes
// behind it; bob and carol approve (alice cannot approve herself, nobody
// counts twice, an editor is not eligible); the delete goes through and a
// signed purge manifest lists what was erased; the selective values are
// gone and every receipt still verifies.
func TestDualControlDeleteWithPurgeManifest(t *testing.T) {
	s := startStack(t, nil)
	expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"dataset:prod","kind":"dataset",`+
		`"attrs":{"classification":"restricted","region":"eu","owner_email":"dpo@example.com"},"selective":["owner_email"]}}`), 201, "")

	del := `{"tenant":"pilot-1","type":"entity.delete","payload":{"id":"dataset:prod"}}`
	aliceNoMFA := s.token("user:alice", "pilot-1")
	alice := s.tokenWithRoles("user:alice", []string{"admin", "approver"}, "pilot-1")

	// Preflight without MFA: both obligations, nothing executed.
	pf := s.do("POST", "/v1/policy/preflight", s.tokenWithoutMFA("user:alice", []string{"admin"}, "pilot-1"), del)
	expect(t, pf, 200, "")
	if pf.body["decision"] != "deny" || !hasObligation(pf, "mfa_required") || !hasObligation(pf, "approvals_required") {
		t.Fatalf("preflight without MFA: %s", pf.raw)
	}
	if !strings.Contains(string(pf.raw), `"rule":"dual_control"`) || !strings.Contains(string(pf.raw), `"classification":"restricted"`) {
		t.Fatalf("preflight rationale lacks the dual_control rule and its attributes: %s", pf.raw)
	}
	// A real delete without MFA is challenged before anything is appended.
	expect(t, s.do("POST", "/v1/commands", aliceNoMFA, del), 401, "step-up-required")

	// With MFA, the real decision equals the preflight: deny, two approvals needed.
	pf = s.do("POST", "/v1/policy/preflight", alice, del)
	denied := s.do("POST", "/v1/commands", alice, del)
	expect(t, denied, 403, "policy-denied")
	if pf.body["decision"] != "deny" || !hasObligation(pf, "approvals_required") || hasObligation(pf, "mfa_required") {
		t.Fatalf("preflight with MFA: %s", pf.raw)
	}

	approve := func(token, key string) response {
		return s.do("POST", "/v1/commands", token, `{"tenant":"pilot-1","type":"approval.grant","justification":"CHG-1042 decommission",`+
			`"payload":{"action":"entity.delete","resource":"dataset:prod","requester":"user:alice"}}`, "Idempotency-Key", key)
	}
	bob := s.tokenWithRoles("user:bob", []string{"approver"}, "pilot-1")
	carol := s.tokenWithRoles("user:carol", []string{"approver"}, "pilot-1")
	dan := s.tokenWithRoles("user:dan", []string{"editor"}, "pilot-1")

	self := approve(alice, "a1")
	expect(t, self, 403, "policy-denied")
	if !strings.Contains(string(self.raw), "no_self_approval") {
		t.Fatalf("self-approval rationale: %s", self.raw)
	}
	expect(t, approve(dan, "d1"), 403, "policy-denied")
	expect(t, approve(bob, "b1"), 201, "")
	expect(t, approve(bob, "b2"), 201, "") // bob again: still one approver
	expect(t, s.do("POST", "/v1/commands", alice, `{"tenant":"pilot-1","type":"approval.grant","justification":"x",`+
		`"payload":{"action":"entity.delete","resource":"dataset:prod","requester":"user:alice","expires_at":"2020-01-01T00:00:00Z"}}`), 422, "validation")
	expect(t, s.do("POST", "/v1/commands", alice, del), 403, "policy-denied")

	expect(t, approve(carol, "c1"), 201, "")
	pf = s.do("POST", "/v1/policy/preflight", alice, del)
	if pf.body["decision"] != "allow" {
		t.Fatalf("preflight after two approvals: %s", pf.raw)
	}
	ok := s.do("POST", "/v1/commands", alice, del)
	expect(t, ok, 201, "")
	delSeq := seqOf(ok)

	// The purge manifest is the next receipt of the tenant.
	var manifest events.Receipt
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := s.do("GET", "/v1/provenance/receipts?tenant=pilot-1&action=purge.manifest", s.admin, "")
		var lr ledger.ListResponse
		_ = json.Unmarshal(r.raw, &lr)
		if len(lr.Receipts) == 1 {
			env, err := events.ParseEnvelope(lr.Receipts[0].Envelope)
			if err != nil {
				t.Fatal(err)
			}
			if err := env.Verify(s.receiptKeys()); err != nil {
				t.Fatalf("purge manifest does not verify: %v", err)
			}
			if manifest, err = events.ParseReceipt(env.Payload); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no purge manifest in the ledger: %s", r.raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if int(manifest.Seq) != delSeq+1 || manifest.Actor != "system:purge-planner" {
		t.Fatalf("manifest seq %d actor %s, want seq %d by the planner", manifest.Seq, manifest.Actor, delSeq+1)
	}
	c, err := manifest.StateChange()
	if err != nil || c == nil || c.Purge == nil {
		t.Fatalf("manifest change %v %v", c, err)
	}
	p := c.Purge
	if p.Subject != "dataset:prod" || p.Requester != "user:alice" || len(p.Approvals) != 3 || len(p.ShreddedKeys) != 1 ||
		len(p.Selective) != 1 || p.Selective[0].Fields[0] != "owner_email" || len(p.Evidence) != 1 {
		t.Fatalf("purge manifest %+v", p)
	}

	// The erased value is gone for good; its receipt still verifies.
	auditor := s.tokenWithRoles("user:eve", []string{"auditor"}, "pilot-1")
	r := s.getReceipt(p.Selective[0].Receipt, auditor, "?disclose=owner_email")
	expect(t, r, 200, "")
	var got ledger.ReceiptResponse
	if err := json.Unmarshal(r.raw, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Disclosed) != 0 || len(got.Erased) != 1 {
		t.Fatalf("after purge: disclosed %v erased %v", got.Disclosed, got.Erased)
	}
	env, _ := events.ParseEnvelope(got.Envelope)
	if err := env.Verify(s.receiptKeys()); err != nil {
		t.Fatalf("erased receipt no longer verifies: %v", err)
	}
	// The erased receipt's evidence blob is gone from the evidence store;
	// another receipt's is still there.
	pool, err := pgxpool.New(context.Background(), s.pgDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ev, err := evidence.New(evidence.Config{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		has, err := ev.Has(context.Background(), p.Evidence[0])
		if err != nil {
			t.Fatal(err)
		}
		if !has {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("evidence %s not erased", p.Evidence[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if has, err := ev.Has(context.Background(), manifest.EvidenceHash); err != nil || !has {
		t.Fatalf("manifest evidence %s missing: %v", manifest.EvidenceHash, err)
	}
	// The audit replay proves the erasure lineage: request → approvals →
	// manifest → shredded keys, every receipt verifying.
	rep, err := ledger.Replay(context.Background(), ledger.ReplayConfig{Brokers: []string{s.kafkaAddr}, Pool: pool, Keys: s.receiptKeys(), Tenant: "pilot-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Erasures) != 1 {
		t.Fatalf("replay erasures %+v", rep.Erasures)
	}
	e := rep.Erasures[0]
	if !e.Complete || e.Subject != "dataset:prod" || e.Request.Actor != "user:alice" || len(e.Approvals) != 3 ||
		e.Approvals[2].Actor != "user:carol" || len(e.ShreddedKeys) != 1 || !e.ShreddedKeys[0].Destroyed || !e.Manifest.Verified {
		t.Fatalf("erasure lineage %+v", e)
	}
	if !rep.Verified() {
		t.Fatalf("replay found broken receipts: %+v", rep.FirstBroken)
	}
	// The graph no longer has the dataset.
	g := s.graphQuery(s.admin, map[string]any{"tenant": "pilot-1", "query": "neighbors('dataset:prod', 1)", "consistency": ok.body["consistency"]})
	if strings.Contains(string(g.raw), "dpo@example.com") {
		t.Fatalf("graph still holds the erased value: %s", g.raw)
	}
}

func hasObligation(r response, typ string) bool {
	obs, _ := r.body["obligations"].([]any)
	for _, o := range obs {
		if m, _ := o.(map[string]any); m["type"] == typ {
			return true
		}
	}
	return false
}

func (s *stack) tokenWithoutMFA(principal string, roles []string, tenants ...string) string {
	s.t.Helper()
	tok, err := s.app.TokenIssuer.Issue(authRequest(principal, roles, false, tenants))
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}
