package commands

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/policy"
)

// Principal is the authenticated caller as the command record carries it.
type Principal struct {
	ID       string    `json:"id"`
	Roles    []string  `json:"roles,omitempty"`
	MFA      bool      `json:"mfa,omitempty"`
	AuthTime time.Time `json:"auth_time,omitzero"`
}

// Result is the outcome of deciding one command against a tenant's state.
type Result struct {
	// Status is the HTTP status the caller gets: 201 allow, 403 deny, or a
	// rejection (404, 409, 422) for which nothing is appended.
	Status int
	// Decision is "allow" or "deny" when a receipt is appended, "" otherwise.
	Decision string
	Change   *events.Change
	// Version is the entity's version after the change (entity commands).
	Version uint64
	Problem *httpx.Problem
}

// PolicyInput builds what the policy sees for cmd in state st at time now.
func PolicyInput(st *TenantState, p Principal, cmd Command, payload any, now time.Time) policy.Input {
	in := policy.Input{Action: cmd.Type, Tenant: cmd.Tenant}
	ctx := map[string]any{}
	switch pl := payload.(type) {
	case *EntityCreate:
		in.Resource = policy.Resource{ID: pl.ID, Kind: pl.Kind, Attrs: nonNil(pl.Attrs)}
		if _, ok := st.Entity(pl.ID); ok {
			in.Resource.Exists = true
		}
	case *EntityUpdate:
		in.Resource = resourceInput(st, pl.ID)
	case *EntityDelete:
		in.Resource = resourceInput(st, pl.ID)
		approvals := []any{}
		for _, a := range st.ValidApprovals(cmd.Type, pl.ID, p.ID, now) {
			approvals = append(approvals, map[string]any{"id": a.ID, "approver": a.Approver,
				"approver_roles": toAny(a.ApproverRoles), "expires_at": a.ExpiresAt.UTC().Format(time.RFC3339)})
		}
		ctx["requester"], ctx["approvals"] = p.ID, approvals
	case *RelationChange:
		in.Resource = resourceInput(st, pl.From)
		t := resourceInput(st, pl.To)
		in.Target = &t
		in.Relation = pl.Rel
	case *PricingSet:
		in.Resource = policy.Resource{ID: "price:" + pl.Meter, Kind: "price", Attrs: map[string]any{
			"meter": pl.Meter, "unit": pl.Unit, "region": pl.Region, "currency": pl.Currency, "applies_to_tenant": pl.AppliesToTenant}}
	case *ApprovalGrant:
		in.Resource = resourceInput(st, pl.Resource)
		ctx["approval"] = map[string]any{"action": pl.Action, "requester": pl.Requester, "approver": p.ID}
	case *PolicyPublish:
		in.Resource = policy.Resource{ID: "policy:bundle", Kind: "policy_bundle", Attrs: map[string]any{}}
	}
	if cmd.Justification != "" {
		ctx["justification"] = cmd.Justification
	}
	if len(ctx) > 0 {
		in.Context = ctx
	}
	in.Principal = principalInput(st, p, cmd.Type, in.Resource.ID)
	in.Principal.MFAAgeSeconds = mfaAge(p, now)
	return in
}

// mfaAge is how many seconds ago the principal's MFA login happened, or -1.
func mfaAge(p Principal, now time.Time) int64 {
	if !p.MFA || p.AuthTime.IsZero() {
		return -1
	}
	age := int64(now.Sub(p.AuthTime) / time.Second)
	if age < 0 {
		age = 0 // clock skew between issuer and processor
	}
	return age
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nonNil(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func resourceInput(st *TenantState, id string) policy.Resource {
	if e, ok := st.Entity(id); ok {
		return policy.Resource{ID: id, Kind: e.Kind, Attrs: nonNil(e.Attrs), Exists: true}
	}
	return policy.Resource{ID: id, Attrs: map[string]any{}}
}

// principalInput merges the token's roles, the principal entity's "roles"
// attribute and the roles it holds through the graph (has_role, also via
// member_of groups); the entity's attributes describe the principal, and the
// groups and can_<action> grants reached are passed under "_graph" exactly
// as who_can passes them.
func principalInput(st *TenantState, p Principal, action, resource string) policy.Principal {
	out := policy.Principal{ID: p.ID, MFA: p.MFA, Attrs: map[string]any{}}
	roles := slices.Clone(p.Roles)
	if e, ok := st.Entity(p.ID); ok {
		out.Exists = true
		out.Kind = e.Kind
		out.Attrs = nonNil(e.Attrs)
		switch r := e.Attrs["roles"].(type) {
		case string:
			roles = append(roles, r)
		case []any:
			for _, v := range r {
				if s, ok := v.(string); ok {
					roles = append(roles, s)
				}
			}
		}
	}
	if out.Exists {
		graphRoles, groups, grants := graphFacts(st, p.ID, action, resource)
		roles = append(roles, graphRoles...)
		if len(groups) > 0 || len(grants) > 0 {
			out.Attrs = maps.Clone(out.Attrs)
			out.Attrs[graphFactsAttr] = map[string]any{"groups": nonNilStrings(groups), "grants": nonNilStrings(grants)}
		}
	}
	sort.Strings(roles)
	out.Roles = slices.Compact(roles)
	if out.Roles == nil {
		out.Roles = []string{}
	}
	return out
}

// Decide is the pure decision step: given the tenant state, a validated
// command (payload from Command.Validate) and the policy decision, it returns
// what to append. It does not mutate st. A policy deny wins over every
// precondition, so a caller without permission learns nothing about state.
func Decide(st *TenantState, cmd Command, payload any, d policy.Decision) Result {
	if !d.Allow {
		return Result{Status: http.StatusForbidden, Decision: events.DecisionDeny,
			Problem: httpx.NewProblem(http.StatusForbidden, "policy-denied", "policy denied "+cmd.Type)}
	}
	switch p := payload.(type) {
	case *EntityCreate:
		return decideCreate(st, cmd, p)
	case *EntityUpdate:
		return decideUpdate(st, cmd, p)
	case *EntityDelete:
		return decideDelete(st, cmd, p)
	case *RelationChange:
		if cmd.Type == TypeRelationLink {
			return decideLink(st, p)
		}
		return decideUnlink(st, p)
	case *PricingSet, *PolicyPublish:
		// No tenant state changes; the receipt is the record (projected by
		// projections/cogs, resp. published to policy.bundle.updates).
		return Result{Status: http.StatusCreated, Decision: events.DecisionAllow}
	case *ApprovalGrant:
		// The processor completes the approval (id, approver, times).
		return Result{Status: http.StatusCreated, Decision: events.DecisionAllow, Change: &events.Change{Op: events.OpApprovalGrant,
			Approval: &events.Approval{Action: p.Action, Resource: p.Resource, Requester: p.Requester, Justification: cmd.Justification}}}
	}
	return reject(http.StatusUnprocessableEntity, "validation", fmt.Sprintf("unsupported payload %T", payload))
}

func reject(status int, kind, detail string) Result {
	return Result{Status: status, Problem: httpx.NewProblem(status, kind, detail)}
}

func conflict(detail string, current uint64) Result {
	r := reject(http.StatusConflict, "version-conflict", detail)
	r.Problem.CurrentVer = &current
	return r
}

func decideCreate(st *TenantState, cmd Command, p *EntityCreate) Result {
	prev, exists := st.Entities[p.ID]
	if exists && !prev.Deleted {
		r := reject(http.StatusConflict, "already-exists", fmt.Sprintf("entity %s already exists (version %d)", p.ID, prev.Version))
		r.Problem.CurrentVer = &prev.Version
		return r
	}
	if cmd.ExpectedVersion != nil && *cmd.ExpectedVersion != 0 {
		return conflict(fmt.Sprintf("expected_version %d, but entity %s does not exist (use 0 or omit it)", *cmd.ExpectedVersion, p.ID), 0)
	}
	version := uint64(1)
	if exists { // re-created after a delete: versions keep counting
		version = prev.Version + 1
	}
	e := &events.Entity{ID: p.ID, Kind: p.Kind, Attrs: nonNil(maps.Clone(p.Attrs)), Version: version}
	return Result{Status: http.StatusCreated, Decision: events.DecisionAllow, Version: version,
		Change: &events.Change{Op: events.OpEntityPut, Entity: e}}
}

func checkVersion(st *TenantState, cmd Command, id string) (*events.Entity, *Result) {
	e, ok := st.Entity(id)
	if !ok {
		r := reject(http.StatusNotFound, "not-found", fmt.Sprintf("entity %s does not exist", id))
		return nil, &r
	}
	if cmd.ExpectedVersion != nil && *cmd.ExpectedVersion != e.Version {
		r := conflict(fmt.Sprintf("expected_version %d, but entity %s is at version %d", *cmd.ExpectedVersion, id, e.Version), e.Version)
		return nil, &r
	}
	return e, nil
}

func decideUpdate(st *TenantState, cmd Command, p *EntityUpdate) Result {
	cur, rej := checkVersion(st, cmd, p.ID)
	if rej != nil {
		return *rej
	}
	attrs := maps.Clone(cur.Attrs)
	if attrs == nil {
		attrs = map[string]any{}
	}
	for k, v := range p.Attrs {
		if v == nil {
			delete(attrs, k)
		} else {
			attrs[k] = v
		}
	}
	e := &events.Entity{ID: cur.ID, Kind: cur.Kind, Attrs: attrs, Version: cur.Version + 1}
	return Result{Status: http.StatusCreated, Decision: events.DecisionAllow, Version: e.Version,
		Change: &events.Change{Op: events.OpEntityPut, Entity: e}}
}

func decideDelete(st *TenantState, cmd Command, p *EntityDelete) Result {
	cur, rej := checkVersion(st, cmd, p.ID)
	if rej != nil {
		return *rej
	}
	rels := st.RelationsOf(p.ID)
	if len(rels) > 0 && !p.Cascade {
		return reject(http.StatusConflict, "has-relations",
			fmt.Sprintf("entity %s still has %d relation(s); unlink them first or set payload.cascade to true", p.ID, len(rels)))
	}
	sortRelations(rels)
	e := &events.Entity{ID: cur.ID, Kind: cur.Kind, Attrs: maps.Clone(cur.Attrs), Version: cur.Version + 1, Deleted: true}
	return Result{Status: http.StatusCreated, Decision: events.DecisionAllow, Version: e.Version,
		Change: &events.Change{Op: events.OpEntityDelete, Entity: e, Unlinked: rels}}
}

func decideLink(st *TenantState, p *RelationChange) Result {
	for _, end := range []struct{ field, id string }{{"payload.from", p.From}, {"payload.to", p.To}} {
		if _, ok := st.Entity(end.id); !ok {
			r := reject(http.StatusNotFound, "not-found", fmt.Sprintf("%s: entity %s does not exist", end.field, end.id))
			r.Problem.Errors = []FieldError{{Field: end.field, Detail: "entity does not exist"}}
			return r
		}
	}
	rel := events.Relation{From: p.From, Rel: p.Rel, To: p.To}
	if _, ok := st.Relations[rel]; ok {
		return reject(http.StatusConflict, "already-exists", fmt.Sprintf("relation %s -%s-> %s already exists", p.From, p.Rel, p.To))
	}
	return Result{Status: http.StatusCreated, Decision: events.DecisionAllow,
		Change: &events.Change{Op: events.OpRelationLink, Relation: &rel}}
}

func decideUnlink(st *TenantState, p *RelationChange) Result {
	rel := events.Relation{From: p.From, Rel: p.Rel, To: p.To}
	if _, ok := st.Relations[rel]; !ok {
		return reject(http.StatusNotFound, "not-found", fmt.Sprintf("relation %s -%s-> %s does not exist", p.From, p.Rel, p.To))
	}
	return Result{Status: http.StatusCreated, Decision: events.DecisionAllow,
		Change: &events.Change{Op: events.OpRelationUnlink, Relation: &rel}}
}

func sortRelations(rs []events.Relation) {
	sort.Slice(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		return strings.Compare(a.From+"\x00"+a.Rel+"\x00"+a.To, b.From+"\x00"+b.Rel+"\x00"+b.To) < 0
	})
}
