// Command replaybench measures the audit replay (ledger.Replay, behind
// `companyos replay`) next to a bare ed25519.Verify loop over the same
// receipts, in one run on one machine.
//
// It starts an embedded kfake broker over TCP, signs --receipts receipts of
// --tenants tenants with a real Ed25519 signer and produces them, projects
// them into a fresh Postgres database with the live ledger projector, then
// times, in this order:
//
//	bare1   ed25519.Verify on one core, over the first --bare1 receipts
//	bare    ed25519.Verify on GOMAXPROCS goroutines over every receipt
//	        (envelopes decoded and PAE built beforehand, not timed)
//	verify  Replay with VerifyOnly: fetch, decode, verify, chain check
//	full    Replay: the same, plus the shadow rebuild and the diff
//
// Usage:
//
//	go run ./bench/replaybench --receipts 1000000 --json /tmp/replaybench.json
//
// The database replaybench_<random> is created with the admin DSN and dropped
// at the end (unless --keep).
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

type phase struct {
	Name          string  `json:"name"`
	Records       int64   `json:"records"`
	Seconds       float64 `json:"seconds"`
	RecordsPerSec float64 `json:"records_per_sec"`
	// CPU in percent of one core over the phase: this process, and the
	// whole machine (so machine − self is Postgres plus anything else).
	SelfCPU    float64 `json:"self_cpu_pct"`
	MachineCPU float64 `json:"machine_cpu_pct"`
	// CPU time per record: this process (kfake included, it runs
	// in-process) and the Postgres backends of the scratch database.
	SelfUSPerRecord float64 `json:"self_cpu_us_per_record"`
	PGUSPerRecord   float64 `json:"pg_cpu_us_per_record"`
	Note            string  `json:"note,omitempty"`
}

type result struct {
	Date       string  `json:"date"`
	Receipts   int     `json:"receipts"`
	Tenants    int     `json:"tenants"`
	Partitions int     `json:"partitions"`
	GOMAXPROCS int     `json:"gomaxprocs"`
	EnvelopeB  float64 `json:"mean_envelope_bytes"`
	Phases     []phase `json:"phases"`
	// VerifyVsBare and FullVsBare are replay throughput over the bare
	// multi-core verify loop's.
	VerifyVsBare float64              `json:"verify_vs_bare"`
	FullVsBare   float64              `json:"full_vs_bare"`
	Report       *ledger.ReplayReport `json:"full_report,omitempty"`
}

func main() {
	var (
		n, tenants, bare1   int
		partitions          int
		adminDSN, jsonPath  string
		keep, skipFull      bool
		skipBare, skipVerif bool
	)
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write CPU profiles of the replays to <path>.verify and <path>.full")
	flag.IntVar(&n, "receipts", 1_000_000, "receipts to produce and replay")
	flag.IntVar(&tenants, "tenants", 100, "tenants (the receipts are spread evenly)")
	flag.IntVar(&partitions, "partitions", 6, "partitions of companyos.events.v1")
	flag.IntVar(&bare1, "bare1", 100_000, "receipts for the single-core verify loop")
	flag.StringVar(&adminDSN, "pg-dsn", "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable", "Postgres DSN used to create the scratch database")
	flag.StringVar(&jsonPath, "json", "", "also write the results as JSON to this file")
	flag.BoolVar(&keep, "keep", false, "keep the scratch database")
	flag.BoolVar(&skipBare, "skip-bare", false, "skip the bare verify loops")
	flag.BoolVar(&skipVerif, "skip-verify", false, "skip the verify-only replay")
	flag.BoolVar(&skipFull, "skip-full", false, "skip the full replay")
	flag.Parse()
	if err := run(n, tenants, partitions, bare1, adminDSN, jsonPath, keep, skipBare, skipVerif, skipFull); err != nil {
		fmt.Fprintln(os.Stderr, "replaybench:", err)
		os.Exit(1)
	}
}

var cpuProfile string

// profile starts a CPU profile to cpuProfile+"."+name (when set) and
// returns its stop.
func profile(name string) func() {
	if cpuProfile == "" {
		return func() {}
	}
	f, err := os.Create(cpuProfile + "." + name)
	if err != nil {
		logf("cpuprofile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		logf("cpuprofile: %v", err)
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func run(n, tenants, partitions, bare1 int, adminDSN, jsonPath string, keep, skipBare, skipVerify, skipFull bool) error {
	if tenants <= 0 || n%tenants != 0 {
		return fmt.Errorf("--receipts must be a multiple of --tenants")
	}
	ctx := context.Background()
	res := &result{Date: time.Now().UTC().Format(time.RFC3339), Receipts: n, Tenants: tenants, Partitions: partitions, GOMAXPROCS: runtime.GOMAXPROCS(0)}

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(partitions), events.TopicEvents))
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	signer := events.NewSigner(sk)
	keys := keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}

	// 1. Sign and produce.
	t0 := time.Now()
	bytes, err := produce(ctx, brokers, signer, n, tenants)
	if err != nil {
		return err
	}
	res.EnvelopeB = float64(bytes) / float64(n)
	logf("produced %d receipts (%.0f B envelopes) in %.1fs", n, res.EnvelopeB, time.Since(t0).Seconds())

	// 2. A scratch database with the live ledger.
	pool, drop, err := scratchDB(ctx, adminDSN, keep)
	if err != nil {
		return err
	}
	defer drop()
	defer pool.Close()
	if err := ledger.Migrate(ctx, pool); err != nil {
		return err
	}
	// Scratch tables: no autovacuum (it slows the load and blocks the drop).
	if _, err := pool.Exec(ctx, `ALTER TABLE receipts SET (autovacuum_enabled = false, toast.autovacuum_enabled = false);
		ALTER TABLE merkle_hashes SET (autovacuum_enabled = false)`); err != nil {
		return err
	}
	m := startMeter()
	if err := project(ctx, brokers, pool, ck); err != nil {
		return err
	}
	p := m.phase("project", int64(n))
	p.Note = "live projector without signature checks (Keys nil), to build the ledger quickly"
	res.Phases = append(res.Phases, p)
	logf("projected: %.0f receipts/s", p.RecordsPerSec)
	if _, err := pool.Exec(ctx, "ANALYZE receipts; ANALYZE merkle_hashes"); err != nil {
		return err
	}

	// 3. Bare verify loops.
	var bare phase
	if !skipBare {
		items, err := loadItems(ctx, brokers, keys)
		if err != nil {
			return err
		}
		k := min(bare1, len(items))
		m = startMeter()
		if bad := verifyAll(items[:k], 1); bad != 0 {
			return fmt.Errorf("bare verify: %d failures", bad)
		}
		res.Phases = append(res.Phases, m.phase("bare1", int64(k)))
		logf("bare verify, 1 goroutine: %.0f/s", res.Phases[len(res.Phases)-1].RecordsPerSec)
		m = startMeter()
		if bad := verifyAll(items, runtime.GOMAXPROCS(0)); bad != 0 {
			return fmt.Errorf("bare verify: %d failures", bad)
		}
		bare = m.phase("bare", int64(len(items)))
		res.Phases = append(res.Phases, bare)
		logf("bare verify, %d goroutines: %.0f/s", runtime.GOMAXPROCS(0), bare.RecordsPerSec)
		items = nil
		runtime.GC()
	}

	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	progress := func(p ledger.ReplayProgress) {
		if p.Phase == "read" && p.Records > 0 {
			logf("  read %d/%d %.0f/s", p.Records, p.Total, p.RecordsPerSec)
		}
	}
	cfg := ledger.ReplayConfig{Brokers: brokers, Pool: pool, Keys: keys, Logger: quiet, Progress: progress, ProgressInterval: 10 * time.Second}

	// 4. Replay, verify only.
	if !skipVerify {
		cfg.VerifyOnly = true
		m = startMeter()
		stop := profile("verify")
		rep, err := ledger.Replay(ctx, cfg)
		stop()
		if err != nil {
			return err
		}
		if !rep.OK() || rep.LinksVerified != int64(n) {
			b, _ := json.MarshalIndent(rep, "", "  ")
			return fmt.Errorf("verify-only replay: not OK: %d links, %d broken:\n%s", rep.LinksVerified, len(rep.Broken), b)
		}
		p := m.phase("verify", rep.Records)
		p.Seconds, p.RecordsPerSec = rep.ReadSeconds, rep.RecordsPerSec
		res.Phases = append(res.Phases, p)
		if bare.RecordsPerSec > 0 {
			res.VerifyVsBare = p.RecordsPerSec / bare.RecordsPerSec
		}
		logf("replay --verify-only: %.0f records/s (%.0f%% of bare)", p.RecordsPerSec, 100*res.VerifyVsBare)
	}

	// 5. Replay with the shadow rebuild and the diff.
	if !skipFull {
		cfg.VerifyOnly = false
		m = startMeter()
		stop := profile("full")
		rep, err := ledger.Replay(ctx, cfg)
		stop()
		if err != nil {
			return err
		}
		if !rep.OK() || rep.Diff.Compared != int64(n) {
			b, _ := json.MarshalIndent(rep, "", "  ")
			return fmt.Errorf("full replay: not OK (compared %d):\n%s", rep.Diff.Compared, b)
		}
		p := m.phase("full", rep.Records)
		p.Note = fmt.Sprintf("setup %.1fs, read+verify+rebuild %.1fs (%.0f/s), diff %.1fs; end to end %.1fs (%.0f/s)",
			rep.SetupSeconds, rep.ReadSeconds, rep.RecordsPerSec, rep.DiffSeconds, rep.ElapsedSeconds, float64(rep.Records)/rep.ElapsedSeconds)
		p.Seconds, p.RecordsPerSec = rep.ElapsedSeconds, float64(rep.Records)/rep.ElapsedSeconds
		res.Phases = append(res.Phases, p)
		res.Report = rep
		if bare.RecordsPerSec > 0 {
			res.FullVsBare = rep.RecordsPerSec / bare.RecordsPerSec
		}
		logf("replay: read+verify+rebuild %.0f/s (%.0f%% of bare), end to end %.1fs", rep.RecordsPerSec, 100*res.FullVsBare, rep.ElapsedSeconds)
	}

	fmt.Printf("replaybench: %d receipts, %d tenants, %d partitions, %.0f B envelopes, GOMAXPROCS %d\n",
		n, tenants, partitions, res.EnvelopeB, res.GOMAXPROCS)
	fmt.Printf("%-8s %10s %9s %12s %9s %9s %12s %10s  %s\n", "phase", "records", "seconds", "records/s", "self CPU", "machine", "self µs/rec", "pg µs/rec", "note")
	for _, p := range res.Phases {
		fmt.Printf("%-8s %10d %9.1f %12.0f %8.0f%% %8.0f%% %12.1f %10.1f  %s\n", p.Name, p.Records, p.Seconds, p.RecordsPerSec, p.SelfCPU, p.MachineCPU,
			p.SelfUSPerRecord, p.PGUSPerRecord, p.Note)
	}
	if res.VerifyVsBare > 0 || res.FullVsBare > 0 {
		fmt.Printf("replay vs bare multi-core verify: verify-only %.0f%%, with rebuild (read phase) %.0f%%\n", 100*res.VerifyVsBare, 100*res.FullVsBare)
	}
	if jsonPath != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// produce signs n receipts of the given tenants (each its own chain,
// interleaved) on every core and produces them keyed by tenant. It returns
// the bytes of envelopes produced.
func produce(ctx context.Context, brokers []string, signer *events.Signer, n, tenants int) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchMaxBytes(4<<20), kgo.MaxBufferedRecords(100_000), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	workers := runtime.GOMAXPROCS(0)
	var total atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []int
			for t := w; t < tenants; t += workers {
				mine = append(mine, t)
			}
			chains := make([]events.Chain, len(mine))
			for i := range chains {
				chains[i] = events.NewChain()
			}
			per := n / tenants
			for i := 0; i < per; i++ {
				for j, t := range mine {
					tenant := fmt.Sprintf("tenant-%03d", t)
					v, err := nextReceipt(signer, tenant, &chains[j], i)
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					total.Add(int64(len(v)))
					cl.Produce(ctx, &kgo.Record{Topic: events.TopicEvents, Key: []byte(tenant), Value: v}, func(_ *kgo.Record, err error) {
						if err != nil {
							firstErr.CompareAndSwap(nil, err)
						}
					})
				}
			}
		}()
	}
	wg.Wait()
	if err := cl.Flush(ctx); err != nil {
		return 0, err
	}
	if e := firstErr.Load(); e != nil {
		return 0, e.(error)
	}
	return total.Load(), nil
}

// nextReceipt is a receipt shaped like the processor's: an allowed
// entity.update with a rationale, the command and its change.
func nextReceipt(signer *events.Signer, tenant string, c *events.Chain, i int) ([]byte, error) {
	seq, prev := c.Next()
	cmd := fmt.Sprintf(`{"type":"entity.update","payload":{"id":"svc:service-%d","attrs":{"owner":"team-%d","tier":"gold","region":"eu-west-1"}},"expected_version":%d}`, i%5000, i%40, seq)
	r := events.Receipt{
		ID: fmt.Sprintf("rcpt_%s_%d", tenant, seq), Action: "entity.update", Actor: fmt.Sprintf("user:user-%d", i%300), Tenant: tenant,
		Decision: events.DecisionAllow, EvidenceHash: events.EvidenceHash([]byte(cmd)), PolicyVersion: "1.4.0+sha256:9f2c4e1ab37d",
		CreatedAt: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Millisecond), Selective: map[string]string{},
		Seq: seq, PrevHash: prev, CommandID: fmt.Sprintf("cmd_%s_%d", tenant, seq),
		Rationale:   json.RawMessage(`[{"rule":"allow_owner_update","reason":"principal owns the entity's team","data":{"team":"team-7"}}]`),
		Obligations: json.RawMessage(`[]`), Subject: fmt.Sprintf("svc:service-%d", i%5000), Command: json.RawMessage(cmd),
		Change: json.RawMessage(`{"op":"update","id":"svc:service-1","attrs":{"owner":"team-7","tier":"gold"}}`),
	}
	payload, err := events.MarshalReceipt(r)
	if err != nil {
		return nil, err
	}
	if err := c.Append(r, payload); err != nil {
		return nil, err
	}
	return signer.Sign(payload).Marshal()
}

// scratchDB creates replaybench_<random> on the admin DSN's server.
func scratchDB(ctx context.Context, adminDSN string, keep bool) (*pgxpool.Pool, func(), error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "replaybench_" + hex.EncodeToString(b[:])
	admin, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return nil, nil, err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(adminDSN)
	if err != nil {
		return nil, nil, err
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		return nil, nil, err
	}
	scratchPool, scratchName = pool, name
	logf("scratch database %s", name)
	drop := func() {
		if keep {
			logf("kept database %s", name)
			return
		}
		c, err := pgx.Connect(context.Background(), adminDSN)
		if err != nil {
			logf("drop %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		for range 20 {
			if _, err = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err == nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		logf("drop %s: %v", name, err)
	}
	return pool, drop, nil
}

// project runs the live projector until its positions reach the last
// stable offsets.
func project(ctx context.Context, brokers []string, pool *pgxpool.Pool, ck ed25519.PrivateKey) error {
	p, err := ledger.NewProjector(ledger.Config{Brokers: brokers, Pool: pool, Signer: ledger.CheckpointSigner{Name: "companyos-ledger", Key: ck},
		CheckpointInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListCommittedOffsets(ctx, events.TopicEvents)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	for {
		select {
		case err := <-done:
			return fmt.Errorf("projector stopped: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
		caught := true
		ends.Each(func(o kadm.ListedOffset) {
			var next int64 = -1
			_ = pool.QueryRow(ctx, "SELECT next_offset FROM ledger_positions WHERE partition = $1", o.Partition).Scan(&next)
			if o.Offset > 0 && next < o.Offset {
				caught = false
			}
		})
		if caught {
			cancel()
			return <-done
		}
	}
}

type item struct {
	pub ed25519.PublicKey
	msg []byte
	sig []byte
}

// loadItems reads every receipt back and prepares exactly what
// ed25519.Verify needs.
func loadItems(ctx context.Context, brokers []string, keys keyfile.KeySet) ([]item, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var items []item
	err = events.ReadToStable(ctx, cl, events.TopicEvents, nil, func(r *kgo.Record) error {
		env, err := events.ParseEnvelope(r.Value)
		if err != nil {
			return err
		}
		pub, ok := keys.Lookup(env.Signatures[0].KeyID)
		if !ok {
			return errors.New("unknown key")
		}
		items = append(items, item{pub: pub, msg: events.PAE(env.PayloadType, env.Payload), sig: env.Signatures[0].Sig})
		return nil
	})
	return items, err
}

func verifyAll(items []item, workers int) (bad int64) {
	var wg sync.WaitGroup
	var nbad atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(items); i += workers {
				if !ed25519.Verify(items[i].pub, items[i].msg, items[i].sig) {
					nbad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return nbad.Load()
}

// meter samples this process's CPU time, the machine's busy time and the
// CPU time of the Postgres backends connected to the scratch database.
type meter struct {
	start       time.Time
	self        time.Duration
	busy, total int64
	pg          *pgSampler
}

func startMeter() meter {
	b, t := machineCPU()
	m := meter{start: time.Now(), self: selfCPU(), busy: b, total: t}
	if scratchPool != nil {
		m.pg = startPGSampler(scratchPool, scratchName)
	}
	return m
}

func (m meter) phase(name string, records int64) phase {
	el := time.Since(m.start)
	b, t := machineCPU()
	self := selfCPU() - m.self
	p := phase{Name: name, Records: records, Seconds: el.Seconds(), RecordsPerSec: float64(records) / el.Seconds()}
	p.SelfCPU = 100 * self.Seconds() / el.Seconds()
	if t > m.total {
		p.MachineCPU = 100 * float64(runtime.NumCPU()) * float64(b-m.busy) / float64(t-m.total)
	}
	if records > 0 {
		p.SelfUSPerRecord = float64(self.Microseconds()) / float64(records)
		if m.pg != nil {
			p.PGUSPerRecord = float64(m.pg.stop().Microseconds()) / float64(records)
		}
	}
	return p
}

var (
	scratchPool *pgxpool.Pool
	scratchName string
	clockTicks  = 100.0 // USER_HZ: jiffies per second in /proc/<pid>/stat
)

// pgSampler follows the CPU time of the backends connected to one database
// (they are separate processes), every 200ms, so that backends that come
// and go during a phase (the shadow pool) are counted too.
type pgSampler struct {
	mu    sync.Mutex
	base  map[int]int64 // jiffies at the first sample (0 for backends born in the phase)
	last  map[int]int64
	done  chan struct{}
	wg    sync.WaitGroup
	pool  *pgxpool.Pool
	dbase string
}

func startPGSampler(pool *pgxpool.Pool, db string) *pgSampler {
	s := &pgSampler{base: map[int]int64{}, last: map[int]int64{}, done: make(chan struct{}), pool: pool, dbase: db}
	s.sample(true)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.sample(false)
			}
		}
	}()
	return s
}

func (s *pgSampler) sample(first bool) {
	rows, err := s.pool.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE datname = $1", s.dbase)
	if err != nil {
		return
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range pids {
		j, ok := procJiffies(int(pid))
		if !ok {
			continue
		}
		if _, seen := s.base[int(pid)]; !seen {
			if first {
				s.base[int(pid)] = j
			} else {
				s.base[int(pid)] = 0
			}
		}
		s.last[int(pid)] = j
	}
}

func (s *pgSampler) stop() time.Duration {
	s.sample(false)
	close(s.done)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var j int64
	for pid, l := range s.last {
		j += l - s.base[pid]
	}
	return time.Duration(float64(j) / clockTicks * float64(time.Second))
}

// procJiffies returns utime+stime of a process from /proc/<pid>/stat.
func procJiffies(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, true
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns busy and total jiffies from /proc/stat (0, 0 elsewhere).
func machineCPU() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}
