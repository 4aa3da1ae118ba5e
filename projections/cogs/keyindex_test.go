package cogs

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// weaken makes fingerprints collide (half of all ids share one), in Go and
// in ClickHouse alike, so that every path through the key index runs:
// keys the index cannot rule out must be looked up, and counted exactly.
func weaken(p *Projector) {
	p.parser.fp = func(_, id string) uint64 { return uint64(len(id) % 2) }
	p.fpSQL = "toUInt64(length(id) % 2)"
}

// Go and ClickHouse compute the same fingerprint, so a range loaded from
// ClickHouse matches the keys the projector parses.
func TestFingerprintMatchesClickHouse(t *testing.T) {
	e := newEnv(t)
	for _, k := range [][2]string{
		{"//meterload/agent-1", "abc-123"}, {"", ""}, {"svc/é", "ü-1"}, {"a\x00b", "c"}, {"a", "b\x00c"},
		{strings.Repeat("s", 300), strings.Repeat("i", 300)}, {"'quote", `back\slash`},
	} {
		var got uint64
		source, id := k[0], k[1]
		if err := e.conn.QueryRow(e.ctx, "SELECT "+fingerprintSQL+" FROM (SELECT ? AS source, ? AS id)", source, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := fingerprint(source, id); got != want {
			t.Errorf("fingerprint(%q, %q) = %d in Go, %d in ClickHouse", source, id, want, got)
		}
	}
}

// Duplicates that arrive in later flushes of the same run (so the
// projector knows the originals from its own writes, not from a look-up at
// start), with real and with colliding fingerprints.
func TestDuplicatesAcrossFlushesCountOnce(t *testing.T) {
	for _, weak := range []bool{false, true} {
		t.Run(fmt.Sprintf("weak=%v", weak), func(t *testing.T) {
			e := newEnv(t)
			e.producePrices(basePrices...)
			var xs []ev
			for i := range 30 {
				xs = append(xs, ev{tenant: "acme", id: fmt.Sprintf("d%d", i), at: fmt.Sprintf("2026-01-08T%02d:15:00Z", i%3),
					qty: "1", tags: map[string]string{"service": "api"}})
			}
			e.produceEvents(xs...)
			var dups []ev
			for _, x := range xs[:10] {
				x.qty = "99" // a buggy resend: the first occurrence wins
				dups = append(dups, x)
			}
			e.produceEvents(dups...)
			e.produceEvents(xs[20:25]...)
			reg := prometheus.NewRegistry()
			p := e.projector(reg, func(c *Config) { c.BatchSize, c.FlushInterval = 4, 10*time.Millisecond })
			if weak {
				weaken(p)
			}
			if err := e.runUntil(p, e.caughtUp); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"acme 2026-01-08": "15"} // 30 × 1 s × 0.5
			assertMap(t, "costs", e.costs(), want)
			if v := mustCounter(t, reg, "cogs_metering_events_total", "duplicate"); v != 15 {
				t.Errorf("duplicates = %v, want 15", v)
			}
			if got := e.count("SELECT count() FROM metering_events"); got != 30 {
				t.Errorf("metering_events rows = %d, want 30", got)
			}
			if f := mustCounter(t, reg, "cogs_metering_events_total", "accepted"); f != 30 {
				t.Errorf("accepted = %v, want 30", f)
			}
			// A full replay by a fresh projector (which loads the index from
			// ClickHouse) changes nothing.
			e.forgetPositions()
			p2 := e.projector(nil, func(c *Config) { c.BatchSize = 7 })
			if weak {
				weaken(p2)
			}
			if err := e.runUntil(p2, e.caughtUp); err != nil {
				t.Fatal(err)
			}
			assertMap(t, "costs after a replay", e.costs(), want)
			if got := e.count("SELECT count() FROM metering_events"); got != 30 {
				t.Errorf("metering_events rows after a replay = %d, want 30", got)
			}
		})
	}
}

// A write that happened but was reported as failed (a lost acknowledgement)
// is retried; what the projector holds in memory must not make it count
// twice or store twice. Hours of history, and hours around now (whose
// buckets the projector keeps in memory between flushes).
func TestWriteReportedFailedIsRetriedExactly(t *testing.T) {
	for _, when := range []string{"history", "now"} {
		for _, step := range []string{"events", "buckets"} {
			t.Run(when+"/"+step, func(t *testing.T) {
				base := time.Date(2026, 1, 9, 0, 0, 0, 0, time.UTC)
				if when == "now" {
					base = time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
				}
				e := newEnv(t)
				e.producePrices(basePrices...)
				var xs []ev
				for i := range 24 {
					xs = append(xs, ev{tenant: fmt.Sprintf("t%d", i%2), id: fmt.Sprintf("w%d", i),
						at: base.Add(time.Duration(i%4)*time.Hour + time.Minute).Format(time.RFC3339), qty: "2",
						tags: map[string]string{"service": "api"}})
				}
				e.produceEvents(xs[:12]...)
				e.produceEvents(xs[:3]...) // duplicates
				e.produceEvents(xs[12:]...)
				p := e.projector(nil, func(c *Config) { c.BatchSize, c.FlushInterval = 5, 10*time.Millisecond })
				var mu sync.Mutex
				failures := 0
				p.afterWrite = func(s string) error {
					mu.Lock()
					defer mu.Unlock()
					if s == step && failures < 3 {
						failures++
						return errors.New("simulated lost acknowledgement")
					}
					return nil
				}
				if err := e.runUntil(p, e.caughtUp); err != nil {
					t.Fatal(err)
				}
				if failures != 3 {
					t.Fatalf("%d simulated failures, want 3", failures)
				}
				if got := e.count("SELECT count() FROM metering_events"); got != 24 {
					t.Errorf("metering_events rows = %d, want 24", got)
				}
				// Each tenant has 6 events of 2 s in each of its two hours.
				h := func(n int) string { return base.Add(time.Duration(n) * time.Hour).Format(time.RFC3339) }
				assertRows(t, "hourly", e.rows(`SELECT tenant, hour, quantity, events FROM usage_hourly_current ORDER BY tenant, hour`), [][]string{
					{"t0", h(0), "12", "6"}, {"t0", h(2), "12", "6"}, {"t1", h(1), "12", "6"}, {"t1", h(3), "12", "6"},
				})
				if got := e.count("SELECT toUInt64(sum(cost) * 1000) FROM cogs_hourly"); got != 24000 {
					t.Errorf("total cost × 1000 = %d, want 24000 (48 s at 0.5)", got)
				}
			})
		}
	}
}

// The crash scenarios of TestCrashBeforePositionsDoesNotDoubleCount with
// colliding fingerprints: the restarted projector loads what the crashed
// one stored and must recognise every replayed record.
func TestCrashWithCollidingFingerprints(t *testing.T) {
	for _, where := range []string{"after events", "before positions"} {
		t.Run(where, func(t *testing.T) {
			e := newEnv(t)
			e.producePrices(basePrices...)
			var xs []ev
			for i := range 40 {
				xs = append(xs, ev{tenant: "acme", id: fmt.Sprintf("c%d", i), at: fmt.Sprintf("2026-01-06T%02d:30:00Z", i%24),
					qty: "0.25", tags: map[string]string{"service": "api"}})
			}
			e.produceEvents(xs...)
			p := e.projector(nil, func(c *Config) { c.BatchSize, c.FlushInterval = 42, time.Hour })
			weaken(p)
			crash := func() error { return errors.New("simulated crash") }
			if where == "after events" {
				p.afterEvents = crash
			} else {
				p.beforePositions = crash
			}
			if err := e.runUntil(p, func() bool { return false }); !errors.Is(err, errCrash) {
				t.Fatalf("Run = %v, want the simulated crash", err)
			}
			e.produceEvents(xs[5], ev{tenant: "acme", id: "late", at: "2026-01-06T05:45:00Z", qty: "4", tags: map[string]string{"service": "api"}})
			p2 := e.projector(nil, func(c *Config) { c.BatchSize = 7 })
			weaken(p2)
			if err := e.runUntil(p2, e.caughtUp); err != nil {
				t.Fatal(err)
			}
			// 40 × 0.25 + 4 = 14 cpu-seconds at 0.5; xs[5] again is a duplicate.
			assertMap(t, "costs", e.costs(), map[string]string{"acme 2026-01-06": "7"})
			if got := e.count("SELECT count() FROM (SELECT DISTINCT tenant, source, id FROM metering_events)"); got != 41 {
				t.Errorf("distinct events = %d, want 41", got)
			}
		})
	}
}

func TestFPSetAgreesWithMap(t *testing.T) {
	var s fpSet
	ref := map[uint64]bool{}
	r := uint64(88172645463325252)
	next := func() uint64 { // xorshift: deterministic, spread
		r ^= r << 13
		r ^= r >> 7
		r ^= r << 17
		return r
	}
	for i := range 200000 {
		fp := next()
		switch i % 7 {
		case 0:
			fp = 0
		case 1:
			fp = uint64(i % 50) // clustered values
		}
		s.add(fp)
		ref[fp] = true
		if i%1000 == 0 {
			probe := next()
			if s.has(probe) != ref[probe] {
				t.Fatalf("has(%d) = %v, want %v", probe, s.has(probe), ref[probe])
			}
		}
	}
	if s.len() != len(ref) {
		t.Fatalf("len = %d, want %d", s.len(), len(ref))
	}
	for fp := range ref {
		if !s.has(fp) {
			t.Fatalf("lost %d", fp)
		}
	}
	if 4*s.n > 3*len(s.slots) || 8*s.n < 3*len(s.slots) {
		t.Errorf("load %d/%d out of [3/8, 3/4]", s.n, len(s.slots))
	}
}
