package cogs

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
)

func TestMigrateIsIdempotent(t *testing.T) {
	e := newEnv(t)
	if err := Migrate(e.ctx, e.conn); err != nil {
		t.Fatal(err)
	}
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if got := e.count("SELECT count() FROM (SELECT DISTINCT version FROM schema_migrations)"); got != uint64(len(ms)) {
		t.Fatalf("schema_migrations has %d versions, want %d", got, len(ms))
	}
	if err := CheckMigrated(e.ctx, e.conn); err != nil {
		t.Fatal(err)
	}
}

func TestSameEventTwiceCountsOnce(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	x := ev{tenant: "acme", id: "e1", at: "2026-01-05T10:15:00Z", qty: "10", tags: map[string]string{"service": "api"}}
	e.produceEvents(x, x)
	// Same key, different content (a buggy resend): the first one wins.
	y := x
	y.qty, y.at = "99", "2026-01-05T10:59:00Z"
	e.produceEvents(y)
	// The same id in another hour is another event to COGS (doc.go, claim 1).
	z := x
	z.at = "2026-01-05T11:00:00Z"
	e.produceEvents(z)
	reg := prometheus.NewRegistry()
	if err := e.runUntil(e.projector(reg, nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	assertMap(t, "costs", e.costs(), map[string]string{"acme 2026-01-05": "10"})
	if got := e.count("SELECT count() FROM metering_events"); got != 2 {
		t.Errorf("metering_events rows = %d, want 2", got)
	}
	if v := mustCounter(t, reg, "cogs_metering_events_total", "duplicate"); v != 2 {
		t.Errorf("duplicates = %v, want 2", v)
	}
}

func TestSameBatchTwiceCountsOnce(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	var xs []ev
	for i := 0; i < 60; i++ {
		xs = append(xs, ev{tenant: fmt.Sprintf("t%d", i%3), id: fmt.Sprintf("b%d", i),
			at: fmt.Sprintf("2026-01-05T%02d:00:00Z", i%24), qty: "1.5", tags: map[string]string{"service": "api"}})
	}
	e.produceEvents(xs...)
	e.sync()
	first := e.costs()
	want := map[string]string{"t0 2026-01-05": "15", "t1 2026-01-05": "15", "t2 2026-01-05": "15"}
	assertMap(t, "first pass", first, want)
	// The same batch again, later in the log: nothing changes; nor does a
	// replay of the whole log.
	e.produceEvents(xs...)
	e.sync()
	assertMap(t, "after the same batch again", e.costs(), want)
	e.forgetPositions()
	e.sync()
	assertMap(t, "after a full replay", e.costs(), want)
	if got := e.count("SELECT count() FROM (SELECT DISTINCT tenant, source, id FROM metering_events)"); got != 60 {
		t.Errorf("distinct events = %d, want 60", got)
	}
}

// A crash after the events (or after every row) but before the positions
// are stored: the next run replays the batch and must not count it again.
func TestCrashBeforePositionsDoesNotDoubleCount(t *testing.T) {
	for _, where := range []string{"after events", "before positions"} {
		t.Run(where, func(t *testing.T) {
			e := newEnv(t)
			e.producePrices(basePrices...)
			var xs []ev
			for i := 0; i < 40; i++ {
				xs = append(xs, ev{tenant: "acme", id: fmt.Sprintf("c%d", i), at: fmt.Sprintf("2026-01-06T%02d:30:00Z", i%24),
					qty: "0.25", tags: map[string]string{"service": "api"}})
			}
			e.produceEvents(xs...)
			// One flush holding all 40 events and the 2 prices.
			p := e.projector(nil, func(c *Config) { c.BatchSize, c.FlushInterval = 42, time.Hour })
			crash := func() error { return errors.New("simulated crash") }
			if where == "after events" {
				p.afterEvents = crash
			} else {
				p.beforePositions = crash
			}
			err := e.runUntil(p, func() bool { return false })
			if !errors.Is(err, errCrash) {
				t.Fatalf("Run = %v, want the simulated crash", err)
			}
			if e.caughtUp() {
				t.Fatal("positions were stored despite the crash")
			}
			// The crash really left rows behind for the replay to cope with.
			if n := e.count("SELECT count() FROM metering_events"); n != 40 {
				t.Fatalf("metering_events = %d after the crash, want 40", n)
			}
			wantHourly := uint64(0)
			if where == "before positions" {
				wantHourly = 24
			}
			if n := e.count("SELECT count() FROM usage_hourly"); n != wantHourly {
				t.Fatalf("usage_hourly = %d rows after the crash, want %d", n, wantHourly)
			}
			// More events arrive; the restarted projector sees different
			// batch boundaries.
			e.produceEvents(ev{tenant: "acme", id: "late", at: "2026-01-06T05:45:00Z", qty: "4", tags: map[string]string{"service": "api"}})
			if err := e.runUntil(e.projector(nil, func(c *Config) { c.BatchSize = 7 }), e.caughtUp); err != nil {
				t.Fatal(err)
			}
			// 40 × 0.25 + 4 = 14 cpu-seconds at 0.5.
			assertMap(t, "costs", e.costs(), map[string]string{"acme 2026-01-06": "7"})
			// And a replay of both topics from the start, with everything
			// already stored, changes nothing.
			e.forgetPositions()
			e.sync()
			assertMap(t, "costs after a third run", e.costs(), map[string]string{"acme 2026-01-06": "7"})
		})
	}
}

func TestLateAndOutOfOrderEvents(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	// Newest first, then an event for an hour already flushed, across
	// several flushes (tiny batches).
	e.produceEvents(
		ev{tenant: "acme", id: "o1", at: "2026-01-07T23:59:59.999Z", qty: "2", tags: map[string]string{"service": "api"}},
		ev{tenant: "acme", id: "o2", at: "2026-01-07T00:00:00Z", qty: "2", tags: map[string]string{"service": "api"}},
		ev{tenant: "acme", id: "o3", at: "2026-01-06T12:00:00Z", qty: "2", tags: map[string]string{"service": "api"}},
	)
	e.sync()
	e.produceEvents(
		ev{tenant: "acme", id: "late1", at: "2026-01-07T00:10:00Z", qty: "1", tags: map[string]string{"service": "api"}},
		ev{tenant: "acme", id: "late2", at: "2026-01-06T12:59:59Z", qty: "1", tags: map[string]string{"service": "api"}},
		ev{tenant: "acme", id: "late3", at: "2025-12-31T23:00:00Z", qty: "1", tags: map[string]string{"service": "api"}}, // before the price
	)
	if err := e.runUntil(e.projector(nil, func(c *Config) { c.BatchSize = 1 }), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	assertMap(t, "costs", e.costs(), map[string]string{"acme 2026-01-06": "1.5", "acme 2026-01-07": "2.5"})
	assertRows(t, "hourly usage", e.rows(`SELECT hour, quantity, events FROM usage_hourly_current WHERE tenant = 'acme' ORDER BY hour`), [][]string{
		{"2025-12-31T23:00:00Z", "1", "1"},
		{"2026-01-06T12:00:00Z", "3", "2"},
		{"2026-01-07T00:00:00Z", "3", "2"},
		{"2026-01-07T23:00:00Z", "2", "1"},
	})
	assertRows(t, "sub-second time kept", e.rows(`SELECT time, time_nanos FROM metering_events WHERE id = 'o1'`),
		[][]string{{"2026-01-07T23:59:59Z", "999000000"}})
}

func TestPriceChangeAndTenantSpecificPrice(t *testing.T) {
	e := newEnv(t)
	e.producePrices(
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Currency: "USD", UnitPrice: "0.5", EffectiveFrom: "2026-01-01T00:00:00Z"},
		// Mid-period change at 12:00 on the 2nd.
		PriceSet{Meter: "compute.cpu_seconds", Unit: "seconds", Region: "*", Currency: "usd", UnitPrice: "0.25", EffectiveFrom: "2026-01-02T12:00:00Z"},
		// A contract price for globex wins over the general ones, even
		// the later one.
		PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Currency: "USD", UnitPrice: "0.1", EffectiveFrom: "2025-06-01T00:00:00Z", AppliesToTenant: "globex"},
		// A regional price wins over '*'.
		PriceSet{Meter: "compute.cpu_seconds", Unit: "s", Region: "EUW1", Currency: "USD", UnitPrice: "0.75", EffectiveFrom: "2025-06-01T00:00:00Z"},
	)
	e.produceEvents(
		ev{tenant: "acme", id: "p1", at: "2026-01-02T11:59:59Z", qty: "10"},
		ev{tenant: "acme", id: "p2", at: "2026-01-02T12:00:00Z", qty: "10"},
		ev{tenant: "acme", id: "p3", at: "2026-01-02T13:00:00Z", qty: "10", tags: map[string]string{"region": "eu-west-1"}},
		ev{tenant: "globex", id: "p4", at: "2026-01-02T11:00:00Z", qty: "10"},
		ev{tenant: "globex", id: "p5", at: "2026-01-02T13:00:00Z", qty: "10"},
		ev{tenant: "acme", id: "p6", at: "2025-12-31T13:00:00Z", qty: "10"}, // no price yet: not costed
	)
	e.sync()
	assertRows(t, "priced hours", e.rows(`SELECT tenant, hour, region, unit_price, cost FROM cogs_hourly ORDER BY tenant, hour`), [][]string{
		{"acme", "2026-01-02T11:00:00Z", "global", "0.5", "5"},
		{"acme", "2026-01-02T12:00:00Z", "global", "0.25", "2.5"},
		{"acme", "2026-01-02T13:00:00Z", "eu-west-1", "0.75", "7.5"},
		{"globex", "2026-01-02T11:00:00Z", "global", "0.1", "1"},
		{"globex", "2026-01-02T13:00:00Z", "global", "0.1", "1"},
	})
	assertRows(t, "catalog provenance", e.rows(`SELECT receipt_id, receipt_seq, actor, meter, unit, currency, region, applies_to_tenant, unit_price
		FROM prices_current ORDER BY receipt_seq`), [][]string{
		{"rcpt_price_1", "1", "user:cfo", "compute.cpu_seconds", "second", "USD", "*", "", "0.5"},
		{"rcpt_price_2", "2", "user:cfo", "compute.cpu_seconds", "second", "USD", "*", "", "0.25"},
		{"rcpt_price_3", "3", "user:cfo", "compute.cpu_seconds", "second", "USD", "*", "globex", "0.1"},
		{"rcpt_price_4", "4", "user:cfo", "compute.cpu_seconds", "second", "USD", "eu-west-1", "", "0.75"},
	})
}

func TestDeniedAndOtherReceiptsAreIgnored(t *testing.T) {
	e := newEnv(t)
	e.produce(&kgo.Record{Topic: events.TopicEvents, Key: []byte("finance"),
		Value: e.priceReceipt(basePrices[0], func(r *events.Receipt) { r.Decision = events.DecisionDeny })})
	e.produce(&kgo.Record{Topic: events.TopicEvents, Key: []byte("finance"),
		Value: e.priceReceipt(basePrices[0], func(r *events.Receipt) { r.Action = "entity.create" })})
	e.sync()
	if n := e.count("SELECT count() FROM prices"); n != 0 {
		t.Fatalf("prices = %d, want 0", n)
	}
}

func TestTagNormalizationEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	e.produceEvents(
		ev{tenant: "acme", id: "n1", at: "2026-01-05T10:00:00Z", qty: "1", unit: "Secs",
			tags: map[string]string{" SVC ": " API-Server ", "Zone": "US-EAST-1A", "Owner": "Payments", "Env": "Production", "custom": "X"}},
		ev{tenant: "acme", id: "n2", at: "2026-01-05T10:00:00Z", qty: "1", tags: map[string]string{"service": "web", "svc": "api"}},
		ev{tenant: "acme", id: "n3", at: "2026-01-05T10:00:00Z", qty: "1", tags: nil},
		ev{tenant: " ACME ", id: "n4", at: "2026-01-05T10:00:00Z", qty: "1", meter: "Compute.CPU_Seconds", tags: map[string]string{"service": "api"}},
		ev{tenant: "Not A Tenant!", id: "n5", at: "2026-01-05T10:00:00Z", qty: "1", tags: map[string]string{"service": "api"}},
	)
	// No subject and no key: nothing to attribute it to.
	x := ev{tenant: "", id: "n6", at: "2026-01-05T10:00:00Z", qty: "1", tags: map[string]string{"service": "api"}}
	e.produce(meteringRecord("", e.eventJSON(x)))
	e.sync()
	assertRows(t, "normalised", e.rows(`SELECT id, tenant, meter, unit, service, region, team, tag_keys, tag_values, raw_tags
		FROM metering_events ORDER BY id`), [][]string{
		{"n1", "acme", "compute.cpu_seconds", "second", "api", "us-east-1", "payments", "[custom env region service team]", "[x prod us-east-1 api payments]",
			`{" SVC ":" API-Server ","Env":"Production","Owner":"Payments","Zone":"US-EAST-1A","custom":"X"}`},
		{"n2", "acme", "compute.cpu_seconds", "second", "web", "global", "unowned", "[region service team]", "[global web unowned]", `{"service":"web","svc":"api"}`},
		{"n3", "acme", "compute.cpu_seconds", "second", Unattributed, "global", "unowned", "[region service team]", "[global (unattributed) unowned]", `{}`},
		{"n4", "acme", "compute.cpu_seconds", "second", "api", "global", "unowned", "[region service team]", "[global api unowned]", `{"service":"api"}`},
		{"n5", "(unattributed)", "compute.cpu_seconds", "second", "api", "global", "unowned", "[region service team]", "[global api unowned]", `{"service":"api"}`},
		{"n6", "(unattributed)", "compute.cpu_seconds", "second", "api", "global", "unowned", "[region service team]", "[global api unowned]", `{"service":"api"}`},
	})
}

func TestPoisonGoesToDLQWithHeaders(t *testing.T) {
	e := newEnv(t)
	e.producePrices(basePrices...)
	good := ev{tenant: "acme", id: "g1", at: "2026-01-05T10:00:00Z", qty: "2", tags: map[string]string{"service": "api"}}
	bad := []struct {
		value  []byte
		reason string
	}{
		{[]byte(`{"specversion":"1.0",`), ReasonBadJSON},
		{e.eventJSON(ev{tenant: "acme", id: "d1", at: "2026-01-05T10:00:00Z", qty: "1e3"}), ReasonInvalidDecimal},
		{e.eventJSON(ev{tenant: "acme", id: "d2", at: "2026-01-05T10:00:00Z", qty: "0.0000000001"}), ReasonInvalidDecimal},
		{e.eventJSON(ev{tenant: "acme", id: "d3", at: "2026-01-05T10:00:00Z", qty: "1", unit: "hour"}), ReasonUnknownUnit},
		{e.eventJSON(ev{tenant: "acme", id: "d4", at: "2026-01-05T10:00:00Z", qty: "1", meter: "gpu.seconds"}), ReasonUnknownMeter},
		{[]byte(`{"specversion":"1.0","id":"d5","source":"s","type":"compute.cpu_seconds","subject":"acme","data":{"quantity":"1","unit":"second"}}`), ReasonInvalidEvent},
	}
	recs := []*kgo.Record{meteringRecord("acme", e.eventJSON(good))}
	for _, b := range bad {
		recs = append(recs, meteringRecord("acme", b.value))
	}
	// The last one was re-driven from the DLQ once already (companyos dlq
	// replay raised its attempt): it keeps the count.
	recs[len(recs)-1].Headers = []kgo.RecordHeader{{Key: HeaderAttempt, Value: []byte("2")}}
	good2 := good
	good2.id = "g2"
	recs = append(recs, meteringRecord("acme", e.eventJSON(good2)))
	e.produce(recs...)
	// A pricing.set receipt that cannot be projected.
	e.produce(&kgo.Record{Topic: events.TopicEvents, Key: []byte("finance"),
		Value: e.priceReceipt(PriceSet{Meter: "compute.cpu_seconds", Unit: "second", Currency: "USD", UnitPrice: "-1", EffectiveFrom: "2026-01-01T00:30:00Z"}, nil)})

	reg := prometheus.NewRegistry()
	if err := e.runUntil(e.projector(reg, nil), e.caughtUp); err != nil {
		t.Fatal(err)
	}
	assertMap(t, "good events still counted", e.costs(), map[string]string{"acme 2026-01-05": "2"})
	if v := mustCounter(t, reg, "metering_dlq_total", ""); v != float64(len(bad)) {
		t.Errorf("metering_dlq_total = %v, want %d", v, len(bad))
	}
	if v := mustCounter(t, reg, "cogs_metering_events_total", ResultDLQ); v != float64(len(bad)) {
		t.Errorf(`cogs_metering_events_total{result="dlq"} = %v, want %d`, v, len(bad))
	}

	dlq := e.readDLQ(len(bad) + 1)
	meteringPart := -1
	for i, r := range dlq {
		h := headers(r)
		if i < len(bad) {
			if string(r.Value) != string(bad[i].value) {
				t.Errorf("dlq[%d] value = %s", i, r.Value)
			}
			if h[HeaderReason] != bad[i].reason {
				t.Errorf("dlq[%d] reason = %q, want %q (%s)", i, h[HeaderReason], bad[i].reason, h["reason_poisoned"])
			}
			if h[HeaderSourceTopic] != events.TopicMetering || string(r.Key) != "acme" {
				t.Errorf("dlq[%d] source topic = %q, record key %q", i, h[HeaderSourceTopic], r.Key)
			}
			if meteringPart == -1 {
				meteringPart, _ = strconv.Atoi(h[HeaderSourcePartition])
			}
			if h[HeaderSourcePartition] != strconv.Itoa(meteringPart) || h[HeaderSourceOffset] != strconv.Itoa(i+1) {
				t.Errorf("dlq[%d] source partition/offset = %s/%s, want %d/%d", i, h[HeaderSourcePartition], h[HeaderSourceOffset], meteringPart, i+1)
			}
		} else if h[HeaderReason] != ReasonInvalidPrice || h[HeaderSourceTopic] != events.TopicEvents {
			t.Errorf("dlq[%d] = %v, want the invalid price", i, h)
		}
		wantAttempt := "1"
		if i == len(bad)-1 {
			wantAttempt = "2"
		}
		if h[HeaderAttempt] != wantAttempt || h["reason_poisoned"] == "" || h["handler_poisoned"] == "" {
			t.Errorf("dlq[%d] headers = %v", i, h)
		}
	}
}

// readDLQ reads n records of companyos.dlq.v1, ordered as produced per
// source topic (metering first).
func (e *env) readDLQ(n int) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(events.TopicDLQ), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var meteringRecs, others []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	for len(meteringRecs)+len(others) < n && time.Now().Before(deadline) {
		fs := cl.PollRecords(e.ctx, 100)
		fs.EachRecord(func(r *kgo.Record) {
			if headers(r)[HeaderSourceTopic] == events.TopicMetering {
				meteringRecs = append(meteringRecs, r)
			} else {
				others = append(others, r)
			}
		})
	}
	out := append(meteringRecs, others...)
	if len(out) != n {
		e.t.Fatalf("DLQ holds %d records, want %d", len(out), n)
	}
	return out
}

func headers(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

func mustCounter(t testing.TB, g prometheus.Gatherer, name, result string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := result == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					match = true
				}
			}
			if match {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
