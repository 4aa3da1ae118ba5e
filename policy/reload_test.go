package policy_test

import (
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/companyos/companyos/policy"
)

// The decision cache never serves a stale decision: an attribute change is
// a different key, and a bundle swap empties it.
func TestReloadableCacheInvalidation(t *testing.T) {
	e := starterEngine(t)
	reg := prometheus.NewRegistry()
	r := policy.NewReloadable(e, policy.ReloadableConfig{Registerer: reg})
	in := policy.Input{Action: "entity.update", Tenant: "acme", Principal: principal([]string{"editor"}, "eu"), Resource: resource("eu")}
	if !r.Decide(t.Context(), in).Allow || !r.Decide(t.Context(), in).Allow {
		t.Fatal("editor in own region denied")
	}
	if hits := counterValue(t, reg, "policy_decision_cache_total", "hit"); hits != 1 {
		t.Fatalf("cache hits %v, want 1", hits)
	}
	// The resource moved region: same principal, different values, deny.
	moved := in
	moved.Resource = resource("us")
	if r.Decide(t.Context(), moved).Allow {
		t.Fatal("stale allow after an attribute change")
	}
	// A new bundle that denies editors everything: the cache is emptied.
	files := fstest.MapFS{
		"VERSION":    {Data: []byte("9.0.0")},
		"authz.rego": {Data: []byte("package companyos.authz\n\ndecision := {\"allow\": false, \"reasons\": [{\"rule\": \"closed\", \"result\": false}]}\n")},
	}
	closed, err := policy.New(t.Context(), policy.Config{Bundle: files})
	if err != nil {
		t.Fatal(err)
	}
	r.Swap(closed)
	d := r.Decide(t.Context(), in)
	if d.Allow || d.PolicyVersion != closed.Version() {
		t.Fatalf("after swap: %+v", d)
	}
	if v := r.Version(); v != closed.Version() {
		t.Fatalf("version %s", v)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}
