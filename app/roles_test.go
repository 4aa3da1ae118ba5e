package app_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/graph"
)

// who_can (graph read model) and the processor derive a principal's roles
// the same way: checked on random graphs with nested groups and deletes.
func TestRoleDerivationAgrees(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed))
		st := commands.NewTenantState("t")
		g := graph.NewGraph("t")
		apply := func(c *events.Change) {
			if err := st.ApplyChange(c); err != nil {
				t.Fatal(err)
			}
			if _, err := g.ApplyChange(c); err != nil {
				t.Fatal(err)
			}
		}
		var ids []string
		for i := 0; i < 8; i++ {
			for _, k := range []struct{ kind, id string }{{"user", fmt.Sprintf("user:u%d", i)}, {"group", fmt.Sprintf("group:g%d", i)}, {"role", fmt.Sprintf("role:r%d", i)}} {
				attrs := map[string]any{}
				if k.kind == "user" && rng.IntN(3) == 0 {
					attrs["roles"] = []any{"direct"}
				}
				if k.kind == "role" && rng.IntN(4) == 0 {
					attrs["name"] = fmt.Sprintf("named%d", i)
				}
				apply(&events.Change{Op: events.OpEntityPut, Entity: &events.Entity{ID: k.id, Kind: k.kind, Attrs: attrs, Version: 1}})
				ids = append(ids, k.id)
			}
		}
		for i := 0; i < 40; i++ {
			from, to := ids[rng.IntN(len(ids))], ids[rng.IntN(len(ids))]
			rel := []string{"member_of", "has_role", "depends_on"}[rng.IntN(3)]
			r := events.Relation{From: from, Rel: rel, To: to}
			if from == to || g.HasEdge(from, rel, to) {
				continue
			}
			apply(&events.Change{Op: events.OpRelationLink, Relation: &r})
		}
		// Delete a couple of groups (with their relations).
		for _, id := range []string{"group:g1", "group:g5"} {
			if e, ok := st.Entity(id); ok {
				rels := st.RelationsOf(id)
				apply(&events.Change{Op: events.OpEntityDelete, Entity: &events.Entity{ID: id, Kind: e.Kind, Attrs: e.Attrs, Version: 2, Deleted: true}, Unlinked: rels})
			}
		}
		for i := 0; i < 8; i++ {
			u := fmt.Sprintf("user:u%d", i)
			want, _ := graph.PrincipalRoles(g, u)
			got := commands.GraphRoles(st, u)
			if e, ok := st.Entity(u); ok {
				if rs, ok := e.Attrs["roles"].([]any); ok {
					for _, r := range rs {
						got = append(got, r.(string))
					}
				}
			}
			sort.Strings(got)
			got = slices.Compact(got)
			if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Fatalf("seed %d %s: processor roles %v, who_can roles %v", seed, u, got, want)
			}
		}
	}
}
