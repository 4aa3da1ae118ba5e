package cogs_test

import (
	"fmt"

	"github.com/companyos/companyos/projections/cogs"
)

// Tags as producers send them, normalised by schemas/clickhouse/tag_rules.yaml:
// key aliases, case folding, trimming, value aliases and defaults.
func ExampleRules_NormalizeTags() {
	rules, err := cogs.DefaultRules()
	if err != nil {
		panic(err)
	}
	t := rules.NormalizeTags(map[string]string{" SVC ": "API-Server", "Zone": "use1", "Env": "Production"})
	fmt.Println(t.Service, t.Region, t.Team)
	fmt.Println(t.Keys, t.Values)
	fmt.Println(rules.NormalizeTags(nil).Service)
	// Output:
	// api us-east-1 unowned
	// [env region service team] [prod us-east-1 api unowned]
	// (unattributed)
}

// A pricing.set payload is checked the way the cogs projector will project
// it: prices take effect on whole UTC hours.
func ExampleValidatePriceSet() {
	rules, _ := cogs.DefaultRules()
	err := cogs.ValidatePriceSet(rules, cogs.PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Region: "*",
		Currency: "USD", UnitPrice: "0.000012", EffectiveFrom: "2026-01-01T00:30:00Z"})
	fmt.Println(err)
	// Output:
	// effective_from 2026-01-01T00:30:00Z is not a whole hour
}
