package ledger

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkProjection measures receipts/s from Kafka into Postgres (receipts,
// Merkle hashes, heads, positions) for 100k receipts over 100 tenants, with
// the log produced beforehand. Run with -benchtime=1x.
func BenchmarkProjection(b *testing.B) {
	const tenants, perTenant = 100, 1000
	for range b.N {
		b.StopTimer()
		e := newEnv(b)
		// stores.TestPostgres drops the database WITH (FORCE), which a
		// non-superuser cannot do while autovacuum works on it, and 100k
		// inserts trigger autovacuum: keep it off these scratch tables.
		if _, err := e.pool.Exec(e.ctx, `ALTER TABLE receipts SET (autovacuum_enabled = false, toast.autovacuum_enabled = false);
			ALTER TABLE merkle_hashes SET (autovacuum_enabled = false)`); err != nil {
			b.Fatal(err)
		}
		for t := range tenants {
			e.produceChain(fmt.Sprintf("t%03d", t), perTenant)
		}
		p := e.projector(nil)
		b.StartTimer()
		start := time.Now()
		var el time.Duration
		if err := e.runUntil(p, func() bool {
			if e.caughtUp() {
				el = time.Since(start)
				return true
			}
			return false
		}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if n := e.count("SELECT count(*) FROM receipts"); n != tenants*perTenant {
			b.Fatalf("receipts = %d", n)
		}
		b.ReportMetric(float64(tenants*perTenant)/el.Seconds(), "receipts/s")
	}
}
