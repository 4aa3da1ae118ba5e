package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/companyos/companyos/bench/meterfixture"
	"github.com/companyos/companyos/internal/stores"
)

// The whole path on a smaller fixture: generate, produce, project, compare.
// Costs must match exactly and anomalies_day.sql must find the injected
// anomalies and nothing else.
func TestFixtureEndToEnd(t *testing.T) {
	addr, db := stores.TestClickHouse(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		Fixture:        meterfixture.Config{Tenants: 6, Days: 20, Seed: 11},
		ClickHouseAddr: addr, Database: db, Keep: true, // TestClickHouse drops it
		BatchSize: 2000, FlushInterval: 100 * time.Millisecond,
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := res.Report
	if !r.OK || r.AttributionErrorPct != 0 || r.Mismatched != 0 || len(r.Anomalies.Found) != len(r.Anomalies.Injected) || len(r.Anomalies.Injected) == 0 {
		t.Fatalf("report not exact: %+v", r)
	}
	t.Logf("%d records, %.0f records/s, total %s", res.Records, res.RecordsPerSec, r.ActualTotal)
}
