package graph

import (
	"context"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/companyos/companyos/policy"
)

// Relation types and prefixes that give principals roles and grants.
const (
	// RelHasRole links a principal or group to a role node "role:<name>".
	RelHasRole = "has_role"
	// RelMemberOf links a principal to a group, or a group to a group.
	RelMemberOf = "member_of"
	// GrantRelPrefix + action names a direct grant on a resource, e.g.
	// user:alice -can_export-> dataset:prod.
	GrantRelPrefix = "can_"
	// RolePrefix is the id prefix of role nodes.
	RolePrefix = "role:"
	// MaxGroupDepth bounds member_of chains (groups in groups).
	MaxGroupDepth = 8
	// GraphFactsAttr is the principal attribute under which who_can passes
	// graph facts to the policy (policy.Input has no field for them):
	// {"groups": [...], "grants": [...]}, both []string: the sorted ids of
	// the groups reached over member_of, and the relation types (like
	// "can_export") that the principal or one of its groups holds on the
	// resource. It is set only when one of them is non-empty, and hides an
	// entity attribute of the same name.
	GraphFactsAttr = "_graph"
)

// Authorizer decides one policy input; *policy.Engine implements it. It
// must be safe for concurrent use.
type Authorizer interface {
	Decide(ctx context.Context, in policy.Input) policy.Decision
}

var _ Authorizer = (*policy.Engine)(nil)

// Grant is a direct can_<action> relation that reaches the resource, with
// the path from the principal (through its groups) to it.
type Grant struct {
	Rel  string `json:"rel"`
	Path []Edge `json:"path"`
}

// PrincipalAccess is one principal who_can found allowed.
type PrincipalAccess struct {
	ID    string   `json:"id"`
	Kind  string   `json:"kind"`
	Roles []string `json:"roles"`
	// RolePaths maps each graph-derived role to the relations that give it
	// (roles only from the "roles" attribute have no entry).
	RolePaths     map[string][]Edge   `json:"role_paths"`
	Grants        []Grant             `json:"grants,omitempty"`
	Rationale     []policy.Reason     `json:"rationale"`
	Obligations   []policy.Obligation `json:"obligations,omitempty"`
	PolicyVersion string              `json:"policy_version,omitempty"`
}

// PrincipalRoles derives a principal's roles: its "roles" attribute (a
// string or list of strings) ∪ the roles reached over the graph —
// principal -has_role-> role, and principal -member_of-> group
// (-member_of-> group)* -has_role-> role, at most MaxGroupDepth groups
// deep. A role's name is its node's "name" attribute, else its id without
// "role:". roles is sorted and has no duplicates; paths maps each
// graph-derived role to a shortest chain of relations that gives it.
// An unknown principal has no roles.
func PrincipalRoles(g *Graph, principalID string) (roles []string, paths map[string][]Edge) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	i, ok := g.index[principalID]
	if !ok || g.nodes[i].deleted {
		return []string{}, map[string][]Edge{}
	}
	f := g.principalFacts(i, "", noNode)
	return f.roles, g.rolePaths(&f)
}

// principalFacts is what the graph says about one principal. Paths are
// kept as indexes into steps and turned into Edges only for principals
// that are reported (see rolePaths, grants).
type principalFacts struct {
	roles  []string   // sorted, no duplicates: attribute ∪ graph roles
	steps  []factStep // steps[0] is the principal, then the groups reached
	roleAt []factHit  // graph-derived roles, first (shortest) path each
	grants []factHit  // can_<action> edges to the resource
}

// factStep is the principal (from = -1) or a group reached over member_of
// from steps[from].
type factStep struct {
	node  uint32
	from  int32
	rel   uint16
	depth uint8
}

// factHit is the edge e leaving steps[at] that gave a role (name) or grant.
type factHit struct {
	name string
	at   int32
	e    edge
}

// principalFacts walks member_of edges breadth-first from principal p,
// collecting roles and (when resource is a node) can_<action> grants on
// it. The caller holds g.mu. who_can calls it for every candidate, so it
// allocates little.
func (g *Graph) principalFacts(p uint32, action string, resource uint32) principalFacts {
	var f principalFacts
	roles := attrRoles(g.nodes[p].attrs)
	hasRole, okRole := g.relIndex[RelHasRole]
	memberOf, okMember := g.relIndex[RelMemberOf]
	grantRel, okGrant := uint16(0), false
	if action != "" && resource != noNode {
		grantRel, okGrant = g.relIndex[GrantRelPrefix+action]
	}
	var buf [16]factStep
	steps := append(buf[:0], factStep{node: p, from: -1})
	if okRole || okMember || okGrant {
		for k := 0; k < len(steps); k++ {
			r := steps[k]
			for _, e := range g.out[r.node] {
				switch {
				case okRole && e.rel == hasRole:
					name, ok := g.roleName(e.peer)
					if ok && !slices.ContainsFunc(f.roleAt, func(h factHit) bool { return h.name == name }) {
						f.roleAt = append(f.roleAt, factHit{name: name, at: int32(k), e: e})
						roles = append(roles, name)
					}
				case okGrant && e.rel == grantRel && e.peer == resource:
					f.grants = append(f.grants, factHit{name: GrantRelPrefix + action, at: int32(k), e: e})
				case okMember && e.rel == memberOf && r.depth < MaxGroupDepth && !reachedNode(steps, e.peer):
					steps = append(steps, factStep{node: e.peer, from: int32(k), rel: e.rel, depth: r.depth + 1})
				}
			}
		}
	}
	f.steps = slices.Clone(steps)
	sort.Strings(roles)
	f.roles = slices.Compact(roles)
	if f.roles == nil {
		f.roles = []string{}
	}
	return f
}

// reachedNode is a linear search: principals are in few groups.
func reachedNode(s []factStep, n uint32) bool {
	for _, x := range s {
		if x.node == n {
			return true
		}
	}
	return false
}

// pathTo is the chain of edges from the principal to steps[at], then e.
// The caller holds g.mu.
func (g *Graph) pathTo(f *principalFacts, at int32, e edge) []Edge {
	n := 1
	for j := at; f.steps[j].from >= 0; j = f.steps[j].from {
		n++
	}
	path := make([]Edge, n)
	path[n-1] = g.edgeOf(f.steps[at].node, e)
	for j, k := at, n-2; f.steps[j].from >= 0; j, k = f.steps[j].from, k-1 {
		s := f.steps[j]
		path[k] = Edge{From: g.nodes[f.steps[s.from].node].id, Rel: g.rels[s.rel], To: g.nodes[s.node].id}
	}
	return path
}

// rolePaths maps each graph-derived role to its path. The caller holds g.mu.
func (g *Graph) rolePaths(f *principalFacts) map[string][]Edge {
	m := make(map[string][]Edge, len(f.roleAt))
	for _, h := range f.roleAt {
		m[h.name] = g.pathTo(f, h.at, h.e)
	}
	return m
}

// grantList lists the grants with their paths. The caller holds g.mu.
func (g *Graph) grantList(f *principalFacts) []Grant {
	if len(f.grants) == 0 {
		return nil
	}
	out := make([]Grant, len(f.grants))
	for k, h := range f.grants {
		out[k] = Grant{Rel: h.name, Path: g.pathTo(f, h.at, h.e)}
	}
	return out
}

// graphFacts is the GraphFactsAttr value, or nil when there is nothing to
// say. The caller holds g.mu.
func (g *Graph) graphFacts(f *principalFacts) map[string]any {
	if len(f.steps) < 2 && len(f.grants) == 0 {
		return nil
	}
	groups := make([]string, 0, len(f.steps)-1)
	for _, s := range f.steps[1:] {
		groups = append(groups, g.nodes[s.node].id)
	}
	sort.Strings(groups)
	grants := make([]string, 0, 1)
	for _, h := range f.grants {
		if !slices.Contains(grants, h.name) {
			grants = append(grants, h.name)
		}
	}
	return map[string]any{"groups": groups, "grants": grants}
}

func (g *Graph) edgeOf(from uint32, e edge) Edge {
	return Edge{From: g.nodes[from].id, Rel: g.rels[e.rel], To: g.nodes[e.peer].id}
}

// roleName names role node i: its "name" attribute, else its id without
// "role:". A node that is neither a "role:" id nor has a name gives none.
func (g *Graph) roleName(i uint32) (string, bool) {
	n := &g.nodes[i]
	if n.deleted {
		return "", false
	}
	if s, ok := n.attrs["name"].(string); ok && s != "" {
		return s, true
	}
	if name, ok := strings.CutPrefix(n.id, RolePrefix); ok && name != "" {
		return name, true
	}
	return "", false
}

// attrRoles reads a "roles" attribute: a string or a list of strings.
func attrRoles(attrs map[string]any) []string {
	switch r := attrs["roles"].(type) {
	case string:
		if r != "" {
			return []string{r}
		}
	case []string:
		return slices.Clone(r)
	case []any:
		out := make([]string, 0, len(r))
		for _, v := range r {
			if s, ok := v.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// candidate is one principal prepared for a decision.
type candidate struct {
	idx   uint32
	in    policy.Input
	facts principalFacts
	d     policy.Decision
}

// whoCan evaluates principals in id order, in parallel batches, until it
// has one page plus one (to know whether another page follows). The graph
// lock is held only while building inputs, not while the policy runs.
func (x *execution) whoCan() (Result, error) {
	if x.opts.Authorizer == nil {
		return Result{}, ErrNoAuthorizer
	}
	g := x.g
	g.mu.RLock()
	resource := policy.Resource{ID: x.q.Resource, Attrs: map[string]any{}}
	resIdx, ok := g.index[x.q.Resource]
	if ok && g.nodes[resIdx].live() {
		n := &g.nodes[resIdx]
		resource = policy.Resource{ID: n.id, Kind: n.kind, Attrs: nonNilAttrs(n.attrs), Exists: true}
	} else {
		resIdx = noNode
	}
	var ids []uint32
	for i := range g.nodes {
		n := &g.nodes[i]
		if n.live() && slices.Contains(x.opts.PrincipalKinds, n.kind) && n.id > x.after {
			ids = append(ids, uint32(i))
		}
	}
	sort.Slice(ids, func(a, b int) bool { return g.nodes[ids[a]].id < g.nodes[ids[b]].id })
	g.mu.RUnlock()

	res := emptyResult()
	want := x.opts.Limit + 1
	evaluated := 0
	for len(ids) > 0 && len(res.Principals) < want {
		if err := x.checkNow(); err != nil {
			return Result{}, err
		}
		n := min(nextBatch(want-len(res.Principals), len(res.Principals), evaluated), len(ids))
		cands := x.prepare(ids[:n], resource, resIdx)
		ids = ids[n:]
		evaluated += n
		x.decideAll(cands)
		// A decision cut short by the deadline or ctx is a deny that the
		// policy never made; discard the batch rather than report it.
		if err := x.checkNow(); err != nil {
			return Result{}, err
		}
		res.Principals = x.report(res.Principals, cands, want)
	}
	if len(res.Principals) > x.opts.Limit {
		res.Principals = res.Principals[:x.opts.Limit]
		res.NextCursor = encodeCursor(x.q, res.Principals[len(res.Principals)-1].ID)
	}
	return res, nil
}

// report appends the allowed candidates to out, up to want, building their
// role and grant paths under the read lock.
func (x *execution) report(out []PrincipalAccess, cands []candidate, want int) []PrincipalAccess {
	g := x.g
	g.mu.RLock()
	defer g.mu.RUnlock()
	for k := range cands {
		c := &cands[k]
		if !c.d.Allow {
			continue
		}
		if len(out) == want {
			break
		}
		out = append(out, PrincipalAccess{
			ID: c.in.Principal.ID, Kind: c.in.Principal.Kind, Roles: c.facts.roles,
			RolePaths: g.rolePaths(&c.facts), Grants: g.grantList(&c.facts),
			Rationale: c.d.Rationale, Obligations: c.d.Obligations, PolicyVersion: c.d.PolicyVersion,
		})
	}
	return out
}

// nextBatch sizes the next batch of candidates: enough to find the
// missing allowed principals at the allow rate seen so far (plus a margin),
// between 64 (to keep the workers busy) and 1024 (to bound wasted work).
func nextBatch(missing, allowed, evaluated int) int {
	n := missing
	if evaluated > 0 {
		rate := float64(max(allowed, 1)) / float64(evaluated)
		n = int(float64(missing)/rate*1.2) + 1
	}
	return min(max(n, 64), 1024)
}

// prepare builds the policy inputs of the principals ids under the read
// lock. A principal deleted since the candidate list was made is skipped.
func (x *execution) prepare(ids []uint32, resource policy.Resource, resIdx uint32) []candidate {
	g := x.g
	g.mu.RLock()
	defer g.mu.RUnlock()
	if resIdx != noNode && !g.nodes[resIdx].live() {
		resIdx = noNode
	}
	out := make([]candidate, 0, len(ids))
	for _, i := range ids {
		n := &g.nodes[i]
		if !n.live() {
			continue
		}
		f := g.principalFacts(i, x.q.Action, resIdx)
		attrs := nonNilAttrs(n.attrs)
		if facts := g.graphFacts(&f); facts != nil {
			attrs = maps.Clone(attrs)
			attrs[GraphFactsAttr] = facts
		}
		// who_can asks who is authorized, not who is logged in right now:
		// every candidate is taken to have just stepped up with MFA. Other
		// obligations (dual-control approvals) still deny, and the rationale
		// says which.
		out = append(out, candidate{idx: i, facts: f, in: policy.Input{
			Action: x.q.Action, Tenant: g.tenant,
			Principal: policy.Principal{ID: n.id, Kind: n.kind, Roles: f.roles, Attrs: attrs, Exists: true, MFA: true},
			Resource:  resource,
		}})
	}
	return out
}

// DecisionKeyer is implemented by authorizers (*policy.Engine) that can say
// when two inputs must get the same decision; who_can then evaluates the
// policy once per distinct key instead of once per principal.
type DecisionKeyer interface {
	DecisionKey(in policy.Input) (string, bool)
}

// decideAll evaluates cands on up to GOMAXPROCS goroutines.
func (x *execution) decideAll(cands []candidate) {
	ctx, cancel := context.WithDeadline(x.ctx, x.deadline)
	defer cancel()
	if keyer, ok := x.opts.Authorizer.(DecisionKeyer); ok {
		memo := map[string]policy.Decision{}
		for k := range cands {
			if ctx.Err() != nil {
				return
			}
			key, ok := keyer.DecisionKey(cands[k].in)
			if !ok {
				cands[k].d = x.opts.Authorizer.Decide(ctx, cands[k].in)
				continue
			}
			d, hit := memo[key]
			if !hit {
				d = x.opts.Authorizer.Decide(ctx, cands[k].in)
				if ctx.Err() == nil { // a decision cut short by the deadline is not reusable
					memo[key] = d
				}
			}
			cands[k].d = d
		}
		return
	}
	workers := min(runtime.GOMAXPROCS(0), len(cands))
	if workers <= 1 {
		for k := range cands {
			cands[k].d = x.opts.Authorizer.Decide(ctx, cands[k].in)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= len(cands) || ctx.Err() != nil {
					return
				}
				cands[k].d = x.opts.Authorizer.Decide(ctx, cands[k].in)
			}
		})
	}
	wg.Wait()
}

func nonNilAttrs(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
