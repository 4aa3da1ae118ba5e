package commands

import (
	"sort"
	"strings"
)

// Graph-derived principal facts. The graph read model's who_can
// (projections/graph.PrincipalRoles) derives roles the same way, so that
// who_can answers with what the processor would decide; a test in package
// app checks that the two agree.
const (
	relHasRole     = "has_role"
	relMemberOf    = "member_of"
	grantRelPrefix = "can_"
	maxGroupDepth  = 8
	graphFactsAttr = "_graph"
)

// graphFacts walks principal (-member_of-> group)* -has_role-> role, at most
// maxGroupDepth groups deep, and collects the roles reached, the groups
// reached and the can_<action> grants that the principal or its groups hold
// on resource.
func graphFacts(st *TenantState, principal, action, resource string) (roles, groups, grants []string) {
	type step struct {
		id    string
		depth int
	}
	steps := []step{{principal, 0}}
	reached := map[string]bool{principal: true}
	seenRole := map[string]bool{}
	seenGrant := map[string]bool{}
	for k := 0; k < len(steps); k++ {
		cur := steps[k]
		for r := range st.touching[cur.id] {
			if r.From != cur.id {
				continue
			}
			switch {
			case r.Rel == relHasRole:
				if name, ok := roleName(st, r.To); ok && !seenRole[name] {
					seenRole[name] = true
					roles = append(roles, name)
				}
			case action != "" && r.Rel == grantRelPrefix+action && r.To == resource:
				if !seenGrant[r.Rel] {
					seenGrant[r.Rel] = true
					grants = append(grants, r.Rel)
				}
			case r.Rel == relMemberOf && cur.depth < maxGroupDepth && !reached[r.To]:
				if _, live := st.Entity(r.To); !live {
					continue
				}
				reached[r.To] = true
				steps = append(steps, step{r.To, cur.depth + 1})
				groups = append(groups, r.To)
			}
		}
	}
	sort.Strings(roles)
	sort.Strings(groups)
	sort.Strings(grants)
	return roles, groups, grants
}

func roleName(st *TenantState, id string) (string, bool) {
	e, ok := st.Entity(id)
	if !ok {
		return "", false
	}
	if s, ok := e.Attrs["name"].(string); ok && s != "" {
		return s, true
	}
	if !strings.HasPrefix(id, "role:") {
		return "", false
	}
	return strings.TrimPrefix(id, "role:"), true
}

// GraphRoles exposes the derivation for the cross-check test.
func GraphRoles(st *TenantState, principal string) []string {
	roles, _, _ := graphFacts(st, principal, "", "")
	return roles
}
