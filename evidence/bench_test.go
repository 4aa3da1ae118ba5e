package evidence_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/companyos/companyos/evidence"
)

// BenchmarkPutTx measures the ledger projector's path: one transaction per
// batch of new, distinct fixture-like command bodies, committed. blobs/s is
// the number to compare with the projector's ~20k receipts/s.
//
//	go test ./evidence/ -run '^$' -bench PutTx -benchtime 40x
//
// Variants: puttx is PutTx as shipped (one INSERT … SELECT FROM unnest of
// arrays, sent with QueryExecModeDescribeExec: binary parameters, fresh
// plan); copy is COPY into a session temp table, then INSERT … SELECT;
// unnest-cached is the same INSERT as a cached prepared statement (which can
// settle on a generic plan made while the tables were small); unnest-exec is
// the same INSERT with QueryExecModeExec (text parameters).
func BenchmarkPutTx(b *testing.B) {
	for _, size := range []int{500, 2000, 5000} {
		for _, v := range []struct {
			name string
			put  func(*evidence.Store) func(context.Context, pgx.Tx, [][]byte) error
		}{
			{"puttx", func(s *evidence.Store) func(context.Context, pgx.Tx, [][]byte) error { return s.PutTx }},
			{"copy", func(s *evidence.Store) func(context.Context, pgx.Tx, [][]byte) error { return s.PutTxCopy }},
			{"unnest-cached", func(s *evidence.Store) func(context.Context, pgx.Tx, [][]byte) error {
				return func(ctx context.Context, tx pgx.Tx, b [][]byte) error {
					return s.PutTxMode(ctx, tx, b, pgx.QueryExecModeCacheStatement)
				}
			}},
			{"unnest-exec", func(s *evidence.Store) func(context.Context, pgx.Tx, [][]byte) error {
				return func(ctx context.Context, tx pgx.Tx, b [][]byte) error {
					return s.PutTxMode(ctx, tx, b, pgx.QueryExecModeExec)
				}
			}},
		} {
			b.Run(fmt.Sprintf("%s/batch=%d", v.name, size), func(b *testing.B) {
				e := newEnv(b)
				put := v.put(e.s)
				// One connection throughout, so its server process's CPU
				// time can be read: on a shared machine CPU per blob is
				// steadier than wall time.
				conn, err := e.pool.Acquire(e.ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Release()
				batch := func(blobs [][]byte) {
					if err := pgx.BeginFunc(e.ctx, conn, func(tx pgx.Tx) error { return put(e.ctx, tx, blobs) }); err != nil {
						b.Fatal(err)
					}
				}
				batch(uniqueBodies("warm", size)) // warm the table and the connection
				serverPID := conn.Conn().PgConn().PID()
				server0, client0 := procCPU(serverPID), selfCPU()
				var elapsed time.Duration
				for i := 0; b.Loop(); i++ {
					b.StopTimer()
					blobs := uniqueBodies(fmt.Sprintf("r%d", i), size)
					b.StartTimer()
					start := time.Now()
					batch(blobs)
					elapsed += time.Since(start)
				}
				n := float64(b.N * size)
				b.ReportMetric(n/elapsed.Seconds(), "blobs/s")
				if server0 >= 0 {
					b.ReportMetric(float64((procCPU(serverPID)-server0).Microseconds())/n, "server-cpu-µs/blob")
				}
				// Includes generating the bodies (about 1 µs each).
				b.ReportMetric(float64((selfCPU()-client0).Microseconds())/n, "client-cpu-µs/blob")
			})
		}
	}
}

// procCPU is the user+system CPU time of process pid (Linux /proc), or -1.
func procCPU(pid uint32) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (100 Hz on Linux).
	rest := string(raw[bytes.LastIndexByte(raw, ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPrepare is PutTx's CPU share: SHA-256, sort and zstd per blob.
func BenchmarkPrepare(b *testing.B) {
	e := newEnv(b)
	blobs := uniqueBodies("prep", 2000)
	var n int
	for b.Loop() {
		if err := e.s.Prepare(blobs); err != nil {
			b.Fatal(err)
		}
		n += len(blobs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "blobs/s")
}

// BenchmarkGetPacked reads random packed blobs through a warm pack cache.
func BenchmarkGetPacked(b *testing.B) {
	e := newEnv(b)
	blobs := uniqueBodies("get", 20000)
	e.putAll(blobs, 5000)
	if _, err := e.s.Compact(e.ctx, evidence.CompactOptions{}); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := e.s.Get(e.ctx, evidence.Hash(blobs[i%len(blobs)])); err != nil {
			b.Fatal(err)
		}
		i += 7919
	}
}

// BenchmarkCompactGraph50k is the seed's acceptance measurement: the
// evidence of the whole graph50k fixture (50,000 entity.create and 220,000
// relation.link command bodies, seed 42) stored loose through PutTx, then
// compacted with the default options. It reports the reduction relative to
// the raw bytes, and the tables' on-disk size before and after (VACUUM FULL,
// so dead loose rows are not counted).
//
//	go test ./evidence/ -run '^$' -bench CompactGraph50k -benchtime 1x
func BenchmarkCompactGraph50k(b *testing.B) {
	blobs := fixtureBodies(b, 42, 50000, 220000)
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b)
		e.putAll(blobs, 5000)
		e.vacuumFull()
		before := e.stats()
		b.StartTimer()
		rep, err := e.s.Compact(e.ctx, evidence.CompactOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.vacuumFull()
		after := e.stats()
		b.Logf("blobs %d, raw %d B, loose stored %d B → packs %d B in %d packs, %.1f%% smaller than raw, %.1f%% smaller than loose, %v",
			rep.BlobsPacked, rep.RawBytes, rep.LooseBytes, rep.PackedBytes, rep.Packs, rep.ReductionPct, rep.ReductionVsLoosePct, rep.Duration)
		b.Logf("on disk (heap+TOAST+indexes, after VACUUM FULL): %d B loose → %d B packed", before.TableBytes, after.TableBytes)
		b.ReportMetric(rep.ReductionPct, "reduction_%")
		b.ReportMetric(float64(rep.RawBytes)/1e6, "raw_MB")
		b.ReportMetric(float64(rep.LooseBytes)/1e6, "loose_MB")
		b.ReportMetric(float64(rep.PackedBytes)/1e6, "packed_MB")
		b.ReportMetric(float64(before.TableBytes)/1e6, "disk_before_MB")
		b.ReportMetric(float64(after.TableBytes)/1e6, "disk_after_MB")
		b.ReportMetric(rep.Duration.Seconds(), "compact_s")
		if rep.ReductionPct < 60 {
			b.Fatalf("reduction %.1f%% < 60%%", rep.ReductionPct)
		}
		b.StartTimer()
	}
}
