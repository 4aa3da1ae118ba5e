package graph_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/projections/graph"
)

func Example() {
	ts := graph.NewTenants()
	changes := []*events.Change{
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "svc:A", Kind: "service", Version: 1}},
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "svc:B", Kind: "service", Version: 1}},
		{Op: events.OpEntityPut, Entity: &events.Entity{ID: "db:orders", Kind: "database", Version: 1}},
		{Op: events.OpRelationLink, Relation: &events.Relation{From: "svc:A", Rel: "depends_on", To: "svc:B"}},
		{Op: events.OpRelationLink, Relation: &events.Relation{From: "svc:B", Rel: "depends_on", To: "db:orders"}},
	}
	for i, c := range changes {
		if err := ts.Apply("acme", uint64(i+1), c); err != nil { // seq = the receipt's seq
			panic(err)
		}
	}
	q, err := graph.Parse("rel(2hop, $svc→'db:*', rel='depends_on')", map[string]any{"svc": "svc:A"})
	if err != nil {
		panic(err)
	}
	res, err := graph.Execute(context.Background(), ts.Graph("acme"), q, graph.Options{})
	if err != nil {
		panic(err)
	}
	out, _ := json.Marshal(res.Paths)
	fmt.Println(q)
	fmt.Println(string(out))

	_, err = graph.Parse("rel(2hop, 'svc:A' 'db:*')", nil)
	fmt.Println(err)
	// Output:
	// rel(2hop, 'svc:A'->'db:*', rel='depends_on', dir='out')
	// [{"nodes":["svc:A","svc:B","db:orders"],"edges":[{"from":"svc:A","rel":"depends_on","to":"svc:B"},{"from":"svc:B","rel":"depends_on","to":"db:orders"}]}]
	// 1:19: expected '->' or '→', got string 'db:*'
}
