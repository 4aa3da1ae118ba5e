package cogs

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// finopsDataset is a small dataset whose every query result is computed by
// hand in TestFinOpsQueries.
//
// Prices (USD): cpu 0.5/s from 2026-01-01, 0.25/s from 2026-01-02 (a
// change mid-period), 0.75/s in eu-west-1 (regional wins over '*'), 0.1/s
// for globex (tenant-specific wins over general); storage 0.002/gb-hour.
func finopsDataset(e *env) {
	e.producePrices(
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: "USD", UnitPrice: "0.5", EffectiveFrom: "2026-01-01T00:00:00Z"},
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: "USD", UnitPrice: "0.25", EffectiveFrom: "2026-01-02T00:00:00Z"},
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Region: "eu-west-1", Currency: "USD", UnitPrice: "0.75", EffectiveFrom: "2025-01-01T00:00:00Z"},
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Currency: "USD", UnitPrice: "0.1", EffectiveFrom: "2025-01-01T00:00:00Z", AppliesToTenant: "globex"},
		PriceSet{Meter: "storage.gb_hours", Unit: "gb-hour", Currency: "USD", UnitPrice: "0.002", EffectiveFrom: "2025-01-01T00:00:00Z"},
		// Another currency's price list never mixes into USD reports.
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Currency: "EUR", UnitPrice: "9", EffectiveFrom: "2025-01-01T00:00:00Z"},
	)
	first := ev{tenant: "acme", id: "f1", at: "2026-01-01T05:10:00Z", qty: "10", tags: map[string]string{"svc": "API"}} // 10 × 0.5 = 5
	e.produceEvents(
		first,
		ev{tenant: "acme", id: "f2", at: "2026-01-01T05:20:00Z", qty: "6.5", unit: "s", tags: map[string]string{"service": "api", "region": "use1"}}, // 3.25
		ev{tenant: "acme", id: "f3", at: "2026-01-02T07:00:00Z", qty: "4", tags: map[string]string{"service": "api", "zone": "EU-WEST-1A"}},          // 4 × 0.75 = 3
		ev{tenant: "acme", id: "f4", at: "2026-01-02T08:00:00Z", qty: "8", tags: map[string]string{"service": "web"}},                                // 8 × 0.25 = 2
		ev{tenant: "acme", id: "f5", at: "2026-01-02T09:00:00Z", qty: "100", meter: "storage.gb_hours", unit: "gb-hour",
			tags: map[string]string{"service": "db", "owner": "Payments"}}, // 0.2
		ev{tenant: "globex", id: "f6", at: "2026-01-01T10:00:00Z", qty: "20", tags: map[string]string{"service": "api"}}, // 20 × 0.1 = 2
		ev{tenant: "globex", id: "f7", at: "2026-01-02T10:00:00Z", qty: "30"},                                            // 3, service unattributed
		first, // a duplicate
	)
	// No tenant at all: 2 × 0.25 = 0.5 to the unattributed bucket.
	e.produce(meteringRecord("", e.eventJSON(ev{tenant: "", id: "f8", at: "2026-01-02T11:00:00Z", qty: "2", tags: map[string]string{"service": "api"}})))
}

func TestFinOpsQueries(t *testing.T) {
	e := newEnv(t)
	finopsDataset(e)
	e.sync()

	assertRows(t, QueryCostPerTenantDay, e.query(QueryCostPerTenantDay), [][]string{
		{"(unattributed)", "2026-01-02", "0.5"},
		{"acme", "2026-01-01", "8.25"},
		{"acme", "2026-01-02", "5.2"},
		{"globex", "2026-01-01", "2"},
		{"globex", "2026-01-02", "3"},
	})
	assertRows(t, QueryCostPerTenantServiceDay, e.query(QueryCostPerTenantServiceDay), [][]string{
		{"(unattributed)", "api", "2026-01-02", "0.5"},
		{"acme", "api", "2026-01-01", "8.25"},
		{"acme", "api", "2026-01-02", "3"},
		{"acme", "db", "2026-01-02", "0.2"},
		{"acme", "web", "2026-01-02", "2"},
		{"globex", "(unattributed)", "2026-01-02", "3"},
		{"globex", "api", "2026-01-01", "2"},
	})
	assertRows(t, QueryCostPerTag, e.query(QueryCostPerTag), [][]string{
		{"2026-01-01", "region", "global", "7"},
		{"2026-01-01", "region", "us-east-1", "3.25"},
		{"2026-01-01", "service", "api", "10.25"},
		{"2026-01-01", "team", "unowned", "10.25"},
		{"2026-01-02", "region", "eu-west-1", "3"},
		{"2026-01-02", "region", "global", "5.7"},
		{"2026-01-02", "service", "(unattributed)", "3"},
		{"2026-01-02", "service", "api", "3.5"},
		{"2026-01-02", "service", "db", "0.2"},
		{"2026-01-02", "service", "web", "2"},
		{"2026-01-02", "team", "payments", "0.2"},
		{"2026-01-02", "team", "unowned", "8.5"},
	})
	assertRows(t, QueryTopTenants, e.query(QueryTopTenants), [][]string{
		{"acme", "13.45", "5", "2026-01-01", "2026-01-02"},
		{"globex", "5", "2", "2026-01-01", "2026-01-02"},
	})
	assertRows(t, QueryUnitEconomics, e.query(QueryUnitEconomics), [][]string{
		{"(unattributed)", "compute.cpu_seconds", "second", "2", "0.5", "0.25"},
		// 13.25 / 28.5 = 0.46491228070175438596…, truncated to 18 places.
		{"acme", "compute.cpu_seconds", "second", "28.5", "13.25", "0.464912280701754385"},
		{"acme", "storage.gb_hours", "gb-hour", "100", "0.2", "0.002"},
		{"globex", "compute.cpu_seconds", "second", "50", "5", "0.1"},
	})
	got := e.query(QueryUnattributedSpend)
	assertRows(t, QueryUnattributedSpend+" (exact columns)", project(got, 0, 1, 2, 3, 4), [][]string{
		{"2026-01-02", "service", "globex", "1", "3"},
		{"2026-01-02", "tenant", "(unattributed)", "1", "0.5"},
	})
	assertFloats(t, QueryUnattributedSpend+" share_pct", column(got, 5), []float64{3 / 8.7 * 100, 0.5 / 8.7 * 100})
	dod := e.query(QueryDayOverDay)
	assertRows(t, QueryDayOverDay+" (exact columns)", project(dod, 0, 1, 2, 3, 4), [][]string{
		{"(unattributed)", "2026-01-02", "0.5", "0", "0.5"},
		{"acme", "2026-01-01", "8.25", "0", "8.25"},
		{"acme", "2026-01-02", "5.2", "8.25", "-3.05"},
		{"globex", "2026-01-01", "2", "0", "2"},
		{"globex", "2026-01-02", "3", "2", "1"},
	})
	if pct := column(dod, 5); pct[0] != "NULL" || pct[1] != "NULL" || pct[3] != "NULL" {
		t.Errorf("pct_change without a previous day = %v, want NULL", pct)
	}
	assertFloats(t, QueryDayOverDay+" pct_change", []string{column(dod, 5)[2], column(dod, 5)[4]}, []float64{-3.05 / 8.25 * 100, 50})
	// Two days of data: no tenant has a 14-day history.
	for _, q := range []string{QueryAnomaliesDay, QueryAnomaliesHour} {
		assertRows(t, q, e.query(q), nil)
	}
}

// Every query file runs unchanged through clickhouse-client, as FinOps
// users run it.
func TestQueriesRunInClickHouseClient(t *testing.T) {
	bin, err := exec.LookPath("clickhouse-client")
	if err != nil {
		t.Fatalf("clickhouse-client not found (deploy/local/up.sh installs it): %v", err)
	}
	e := newEnv(t)
	finopsDataset(e)
	e.sync()
	host, port, _ := strings.Cut(e.addr, ":")
	names, err := QueryNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 9 {
		t.Errorf("queries = %v, want 9", names)
	}
	for _, name := range names {
		q, _ := Query(name)
		if !strings.HasPrefix(q, "-- "+name+":") {
			t.Errorf("%s.sql does not start with its documentation comment", name)
		}
		cmd := exec.CommandContext(e.ctx, bin, "--host", host, "--port", port, "--database", e.db)
		cmd.Stdin = strings.NewReader(q)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("%s: clickhouse-client: %v: %s", name, err, stderr.String())
			continue
		}
		if name == QueryCostPerTenantDay && !strings.Contains(out.String(), "acme\t2026-01-02\t5.2000") {
			t.Errorf("%s via clickhouse-client:\n%s", name, out.String())
		}
	}
}

func TestAnomaliesDay(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	// Two tenants, 24 days of one daily storage event each, cost 100, 101 or
	// 102 a day (σ ≈ 0.85). steady spikes ×5 on day 17; calm sends nothing
	// on day 18 (cost 0: a drop). Days after an anomaly have it in their
	// baseline, which widens σ: nothing else is anomalous.
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var recs []*kgo.Record
	for d := 0; d < 24; d++ {
		for _, tenant := range []string{"steady", "calm"} {
			q := 50000 + 500*(d%3) // gb-hours at 0.002: 100, 101, 102
			if tenant == "steady" && d == 17 {
				q = 250000
			}
			if tenant == "calm" && d == 18 {
				continue
			}
			x := ev{tenant: tenant, id: fmt.Sprintf("%s-%d", tenant, d), at: start.AddDate(0, 0, d).Add(12 * time.Hour).Format(time.RFC3339),
				meter: "storage.gb_hours", unit: "gb-hour", qty: strconv.Itoa(q), tags: map[string]string{"service": "db"}}
			recs = append(recs, meteringRecord(tenant, e.eventJSON(x)))
		}
	}
	e.produce(recs...)
	e.sync()
	as, err := DayAnomalies(e.ctx, e.conn)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, fmt.Sprintf("%s %s %s %s", a.Tenant, a.At.Format("2006-01-02"), a.Direction, a.Cost))
	}
	want := []string{"steady 2026-03-18 spike 500", "calm 2026-03-19 drop 0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("anomalies_day = %v, want %v", got, want)
	}

	// The projector's periodic check exports them for the CogsAnomaly alert:
	// only days within the lookback count.
	reg := prometheus.NewRegistry()
	p := e.projector(reg, func(c *Config) { c.AnomalyLookback = time.Since(start.AddDate(0, 0, 18)) })
	if _, err := p.CheckAnomalies(e.ctx); err != nil {
		t.Fatal(err)
	}
	mfs, _ := reg.Gather()
	var gauges []string
	for _, mf := range mfs {
		if mf.GetName() == "cogs_anomalies" {
			for _, m := range mf.GetMetric() {
				gauges = append(gauges, fmt.Sprintf("%s=%v", m.GetLabel(), m.GetGauge().GetValue()))
			}
		}
	}
	if len(gauges) != 1 || !strings.Contains(gauges[0], `value:"calm"`) || !strings.HasSuffix(gauges[0], "=1") {
		t.Errorf("cogs_anomalies = %v, want calm's drop only (steady's spike is older than the lookback)", gauges)
	}
}

func TestAnomaliesHour(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	// 16 days of hourly cpu for one tenant, 100..104 cpu-seconds an hour
	// (σ ≈ 1.4), one hour at 1000 on the last day.
	start := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	spike := start.Add(370 * time.Hour)
	var recs []*kgo.Record
	for h := 0; h < 16*24; h++ {
		at := start.Add(time.Duration(h) * time.Hour)
		q := 100 + h%5
		if at.Equal(spike) {
			q = 1000
		}
		x := ev{tenant: "hourly", id: fmt.Sprintf("h%d", h), at: at.Add(17 * time.Minute).Format(time.RFC3339), qty: strconv.Itoa(q),
			tags: map[string]string{"service": "api"}}
		recs = append(recs, meteringRecord("hourly", e.eventJSON(x)))
	}
	e.produce(recs...)
	e.sync()
	as, err := HourAnomalies(e.ctx, e.conn)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, fmt.Sprintf("%s %s %s %s", a.Tenant, a.At.Format(time.RFC3339), a.Direction, a.Cost))
	}
	want := []string{"hourly " + spike.Format(time.RFC3339) + " spike 500"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("anomalies_hour = %v, want %v", got, want)
	}
}

func project(rows [][]string, cols ...int) [][]string {
	var out [][]string
	for _, r := range rows {
		var p []string
		for _, c := range cols {
			p = append(p, r[c])
		}
		out = append(out, p)
	}
	return out
}

func column(rows [][]string, c int) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r[c])
	}
	return out
}

func assertFloats(t testing.TB, name string, got []string, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %v, want %v", name, got, want)
		return
	}
	for i := range got {
		f, err := strconv.ParseFloat(got[i], 64)
		if err != nil || f-want[i] > 1e-9 || want[i]-f > 1e-9 {
			t.Errorf("%s[%d] = %s, want %v", name, i, got[i], want[i])
		}
	}
}
