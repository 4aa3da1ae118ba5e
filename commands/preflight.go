package commands

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/companyos/companyos/events"
)

// preflight decides cmd exactly as the processor would — same tenant state,
// same policy input, same bundle — but appends nothing, creates no keys and
// changes no state. Selective values are redacted from the policy input
// (as they are for the real decision) with a placeholder commitment.
func (p *Processor) preflight(ctx context.Context, st *TenantState, req Request, cmd Command, payload any) Reply {
	_, attrs, fields := selectiveFields(payload, p.cfg.SelectiveAttrs)
	for _, f := range fields {
		attrs[f] = map[string]any{"$selective": "sha256:preflight"}
	}
	now := p.cfg.Now()
	switch pl := payload.(type) {
	case *ApprovalGrant:
		if _, vp := approvalExpiry(pl, now); vp != nil {
			return Reply{Status: vp.Status, Problem: vp}
		}
	case *PolicyPublish:
		if vp := p.checkBundle(ctx, pl); vp != nil {
			return Reply{Status: vp.Status, Problem: vp}
		}
	}
	in := PolicyInput(st, req.Principal, cmd, payload, now)
	d := p.cfg.Policy.Decide(ctx, in)
	res := Decide(st, cmd, payload, d)
	out := &PreflightResult{Decision: events.DecisionDeny, PolicyVersion: d.PolicyVersion, Status: res.Status, Problem: res.Problem}
	if d.Allow {
		out.Decision = events.DecisionAllow
	}
	out.Rationale, _ = json.Marshal(nonNilSlice(d.Rationale))
	out.Obligations, _ = json.Marshal(nonNilSlice(d.Obligations))
	out.Input, _ = json.Marshal(in)
	return Reply{Status: http.StatusOK, Preflight: out}
}
