package policy

import (
	"context"
	"fmt"
	"testing"
)

func TestDecisionKeyStarterBundle(t *testing.T) {
	e, err := Default(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("input paths read by the starter policy: %v", e.inputPaths)
	base := Input{Action: "entity.delete", Tenant: "t", Principal: Principal{ID: "user:a", Roles: []string{"editor"},
		Attrs: map[string]any{"region": "us", "risk_score": 3, "_graph": map[string]any{"groups": []string{"group:x"}}}},
		Resource: Resource{ID: "dataset:p", Attrs: map[string]any{"region": "us"}}}
	k1, ok := e.DecisionKey(base)
	if !ok {
		t.Fatal("no key")
	}
	// Values the starter policy never reads do not change the key...
	other := base
	other.Principal.ID = "user:b"
	other.Principal.Attrs = map[string]any{"region": "us", "risk_score": 3, "team": "other"}
	if k2, _ := e.DecisionKey(other); k2 != k1 {
		t.Errorf("key depends on unread values:\n%s\n%s", k1, k2)
	}
	// ...values it reads do.
	for _, mut := range []func(*Input){
		func(in *Input) { in.Principal.Roles = []string{"admin"} },
		func(in *Input) { in.Principal.Attrs = map[string]any{"region": "eu"} },
		func(in *Input) { in.Resource.Attrs = map[string]any{"region": "eu"} },
		func(in *Input) { in.Action = "entity.update" },
	} {
		in := base
		mut(&in)
		if k, _ := e.DecisionKey(in); k == k1 {
			t.Errorf("key ignores a value the policy reads: %+v", in)
		}
	}
	// Equal keys mean equal decisions, on a sample of inputs.
	seen := map[string]Decision{}
	for i := 0; i < 200; i++ {
		in := Input{Action: []string{"entity.create", "entity.update", "entity.delete"}[i%3], Tenant: "t",
			Principal: Principal{ID: fmt.Sprintf("user:%d", i), Roles: [][]string{{"admin"}, {"editor"}, {}}[i%3*i%2],
				Attrs: map[string]any{"region": []string{"us", "eu"}[i%2], "n": i}},
			Resource: Resource{ID: "svc:x", Attrs: map[string]any{"region": []string{"us", "eu", "apac"}[i%3]}}}
		k, _ := e.DecisionKey(in)
		d := e.Decide(context.Background(), in)
		if prev, ok := seen[k]; ok && fmt.Sprint(prev) != fmt.Sprint(d) {
			t.Fatalf("same key, different decisions:\n%+v\n%+v", prev, d)
		}
		seen[k] = d
	}
}
