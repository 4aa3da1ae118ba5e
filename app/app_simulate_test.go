package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/companyos/companyos/commands"
	"github.com/companyos/companyos/policy"
)

// Simulation replays logged commands against a candidate bundle: the live
// bundle changes nothing; a bundle granting "creator" entity.create turns
// exactly the creator's denies into allows, grouped by the granting rule.
func TestPolicySimulation(t *testing.T) {
	s := startStack(t, nil)
	creator := s.tokenWithRoles("user:cr", []string{"creator"}, "pilot-1")
	for i := range 5 {
		expect(t, s.do("POST", "/v1/commands", creator, fmt.Sprintf(`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:c%d","kind":"doc"}}`, i)), 403, "policy-denied")
		expect(t, s.do("POST", "/v1/commands", s.admin, fmt.Sprintf(`{"tenant":"pilot-1","type":"entity.create","payload":{"id":"doc:a%d","kind":"doc"}}`, i)), 201, "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	live, err := policy.Default(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := commands.Simulate(ctx, commands.SimulateConfig{Brokers: []string{s.kafkaAddr}, Candidate: live})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Evaluated != 10 || rep.Changed != 0 {
		t.Fatalf("live bundle: %+v", rep)
	}

	files := fstest.MapFS{}
	for name, content := range bundleFiles(t, func(f map[string]string) {
		f["VERSION"] = "0.3.0\n"
		f["data.json"] = strings.Replace(f["data.json"], `"roles": {`, `"roles": {
      "creator": {"description": "may create entities anywhere", "actions": ["entity.create"]},`, 1)
	}) {
		files[name] = &fstest.MapFile{Data: []byte(content)}
	}
	cand, err := policy.New(ctx, policy.Config{Bundle: files})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = commands.Simulate(ctx, commands.SimulateConfig{Brokers: []string{s.kafkaAddr}, Candidate: cand, Since: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Changed != 5 || rep.Unchanged != 5 || len(rep.Groups) != 1 {
		t.Fatalf("candidate: %+v", rep)
	}
	g := rep.Groups[0]
	if g.From != "deny" || g.To != "allow" || g.Rules != "role_grant" || g.Count != 5 || len(g.Examples) != 3 || g.Examples[0].Actor != "user:cr" {
		t.Fatalf("group %+v", g)
	}
	// A window that excludes everything evaluates nothing.
	rep, err = commands.Simulate(ctx, commands.SimulateConfig{Brokers: []string{s.kafkaAddr}, Candidate: cand, Since: time.Now().Add(time.Hour)})
	if err != nil || rep.Evaluated != 0 {
		t.Fatalf("future window: %+v %v", rep, err)
	}
}
