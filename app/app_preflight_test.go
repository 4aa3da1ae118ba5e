package app_test

import (
	"encoding/json"
	"fmt"
	"testing"
)

// Preflight answers exactly what the real command then gets, across
// principals (roles, regions, MFA) and command types, allows and denies.
func TestPreflightEqualsRealDecision(t *testing.T) {
	s := startStack(t, nil)
	setup := []string{
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"user:ed","kind":"user","attrs":{"region":"eu"}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"user:term","kind":"user","attrs":{"region":"eu","employment_status":"terminated"}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"user:risky","kind":"user","attrs":{"region":"eu","risk_score":90}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:eu","kind":"doc","attrs":{"region":"eu"}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:us","kind":"doc","attrs":{"region":"us"}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:ch","kind":"doc","attrs":{"region":"eu","residency":["ch"]}}}`,
	}
	for _, c := range setup {
		expect(t, s.do("POST", "/v1/commands", s.admin, c), 201, "")
	}
	tokens := map[string]string{
		"admin":        s.admin,
		"editor-eu":    s.tokenWithRoles("user:ed", []string{"editor"}, "pilot-1"),
		"terminated":   s.tokenWithRoles("user:term", []string{"editor"}, "pilot-1"),
		"risky-no-mfa": s.tokenWithoutMFA("user:risky", []string{"editor"}, "pilot-1"),
		"nobody":       s.tokenWithRoles("user:nobody", nil, "pilot-1"),
		"finance":      s.tokenWithRoles("user:fin", []string{"finance"}, "pilot-1"),
	}
	bodies := []string{
		`{"tenant":"pilot-1","type":"entity.update","payload":{"id":"doc:eu","attrs":{"v":%d}}}`,
		`{"tenant":"pilot-1","type":"entity.update","payload":{"id":"doc:us","attrs":{"v":%d}}}`,
		`{"tenant":"pilot-1","type":"entity.update","payload":{"id":"doc:ch","attrs":{"v":%d}}}`,
		`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:n%d","kind":"doc","attrs":{"region":"eu"}}}`,
		`{"tenant":"pilot-1","type":"relation.link","payload":{"from":"doc:eu","rel":"cites","to":"doc:us%d"}}`,
		`{"tenant":"pilot-1","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"0.0000%d","effective_from":"2026-01-01T00:00:00Z"}}`,
	}
	n, allows, denies := 0, 0, 0
	for who, tok := range tokens {
		for i, b := range bodies {
			n++
			body := fmt.Sprintf(b, n)
			if i == 4 {
				body = `{"tenant":"pilot-1","type":"relation.link","payload":{"from":"doc:eu","rel":"cites","to":"doc:us"}}`
			}
			pf := s.do("POST", "/v1/policy/preflight", tok, body)
			expect(t, pf, 200, "")
			real := s.do("POST", "/v1/commands", tok, body)
			var want struct {
				Decision  string          `json:"decision"`
				Status    int             `json:"status"`
				Rationale json.RawMessage `json:"rationale"`
			}
			_ = json.Unmarshal(pf.raw, &want)
			if real.status != want.Status {
				t.Errorf("%s %s: preflight said %d (%s), real got %d: %s", who, body, want.Status, want.Decision, real.status, real.raw)
			}
			if want.Decision == "allow" {
				allows++
				continue
			}
			denies++
			// A deny receipt carries the same rationale the preflight gave.
			var got struct {
				Rationale json.RawMessage `json:"rationale"`
			}
			_ = json.Unmarshal(real.raw, &got)
			if real.status == 403 && string(got.Rationale) != string(want.Rationale) {
				t.Errorf("%s %s: rationale differs:\npreflight %s\nreal      %s", who, body, want.Rationale, got.Rationale)
			}
		}
	}
	if allows == 0 || denies == 0 {
		t.Fatalf("matrix not diverse: %d allows, %d denies", allows, denies)
	}
	t.Logf("%d commands: %d allowed, %d denied; preflight matched every one", n, allows, denies)
}
