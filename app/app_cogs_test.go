package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/cogs"
)

// Finance sets a price through the command path (policy-gated, receipted);
// a service posts usage as CloudEvents (one twice); the COGS projector
// turns both into exact per-tenant cost in ClickHouse, counted once.
func TestMeteringToCOGSEndToEnd(t *testing.T) {
	var chAddr string
	s := startStack(t, func(c *app.Config) { chAddr = c.ClickHouseAddr })
	finance := s.tokenWithRoles("user:fin", []string{"finance"}, "finance")
	price := `{"tenant":"finance","type":"pricing.set","payload":{"meter":"compute.cpu_seconds","unit":"second","region":"*","currency":"USD","unit_price":"0.000012","effective_from":"2026-01-01T00:00:00Z"}}`
	expect(t, s.do("POST", "/v1/commands", s.tokenWithRoles("user:ed", []string{"editor"}, "finance"), price), 403, "policy-denied")
	expect(t, s.do("POST", "/v1/commands", finance, price), 201, "")
	// A price the catalog could not apply (not a whole hour) is refused, not receipted.
	expect(t, s.do("POST", "/v1/commands", finance, strings.Replace(price, "T00:00:00Z", "T00:30:00Z", 1)), 422, "validation")

	meter := s.tokenWithRoles("svc:billing-agent", []string{"metering.write"}, "acme")
	batch := `[` +
		`{"specversion":"1.0","id":"e1","source":"svc/api","type":"compute.cpu_seconds","subject":"acme","time":"2026-03-01T10:15:00Z","data":{"quantity":"1000","unit":"second","tags":{"service":"api","region":"eu"}}},` +
		`{"specversion":"1.0","id":"e2","source":"svc/api","type":"compute.cpu_seconds","subject":"acme","time":"2026-03-01T11:15:00Z","data":{"quantity":2500.5,"unit":"second","tags":{"service":"api","region":"eu"}}}` +
		`]`
	for range 2 { // the same batch twice: counted once
		r := s.do("POST", "/v1/metering/events", meter, batch, "Content-Type", "application/cloudevents-batch+json")
		expect(t, r, 202, "")
	}
	ch, err := stores.EnsureClickHouse(context.Background(), chAddr, s.chDB)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows, err := cogs.CostPerTenantDay(context.Background(), ch)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, r := range rows {
			got += fmt.Sprintf("%s %s %s;", r.Tenant, r.Day.Format("2006-01-02"), r.Cost)
		}
		// 3500.5 s × 0.000012 USD/s = 0.042006 USD
		if strings.Contains(got, "acme 2026-03-01 0.042006") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cost_per_tenant_day = %q, want acme 2026-03-01 0.042006", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
