package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/audit"
	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/ledger"
)

// Config is one benchmark run.
type Config struct {
	DSN         string    // database to create and fill (required)
	Receipts    int       // receipts of the one tenant (required)
	Checkpoints int       // signed checkpoints over the range (required)
	Rounds      int       // Verify / bare loop alternations (required)
	Workers     int       // goroutines for Verify and the bare loop (required)
	Dir         string    // bundle directory (required)
	ProfileDir  string    // write export.pprof and verify.pprof CPU profiles here (optional)
	Log         io.Writer // progress (optional)
}

// Phase is one measured step.
type Phase struct {
	Name       string  `json:"name"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"receipts_per_second"`
	ProcessCPU float64 `json:"process_cores"` // this process's CPU time / wall time
	// PerCPUSecond is receipts per CPU-second of this process: unlike the
	// wall-clock rate it does not depend on what else the shared machine runs.
	PerCPUSecond float64 `json:"receipts_per_cpu_second"`
	MachineCPU   float64 `json:"machine_cores"` // all cores busy / wall time (others' work and Postgres included)
}

// Result is what Run measured.
type Result struct {
	Receipts     int     `json:"receipts"`
	Cores        int     `json:"cores"`
	Workers      int     `json:"workers"`
	GoVersion    string  `json:"go_version"`
	BundleBytes  int64   `json:"bundle_bytes"`
	BundlePath   string  `json:"bundle_path"`
	Load         Phase   `json:"load"`
	Export       Phase   `json:"export"`
	Verify       []Phase `json:"verify"`
	Bare         []Phase `json:"bare_ed25519"`
	VerifyOfBare float64 `json:"verify_of_bare"` // best verify rate / best bare rate (wall clock)
	// VerifyOfBareCPU compares receipts per CPU-second (best rounds).
	VerifyOfBareCPU float64 `json:"verify_of_bare_cpu"`
	// RoundRatios are verify/bare of each round (adjacent in time, so less
	// exposed to the shared machine's drift): wall clock and CPU time.
	RoundRatios [][2]float64 `json:"round_ratios"`
}

const tenant = "bench"

// Run loads cfg.Receipts receipts into cfg.DSN, exports them, and measures.
func Run(ctx context.Context, cfg Config) (Result, error) {
	res := Result{Receipts: cfg.Receipts, Cores: runtime.NumCPU(), Workers: cfg.Workers, GoVersion: runtime.Version()}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	pool, err := stores.EnsurePostgres(ctx, cfg.DSN)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	if err := ledger.Migrate(ctx, pool); err != nil {
		return res, err
	}
	// Autovacuum on these scratch tables would only add noise (and block
	// DROP DATABASE for a non-superuser).
	if _, err := pool.Exec(ctx, `ALTER TABLE receipts SET (autovacuum_enabled = false, toast.autovacuum_enabled = false);
		ALTER TABLE merkle_hashes SET (autovacuum_enabled = false)`); err != nil {
		return res, err
	}
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	signer := events.NewSigner(sk)
	l, err := ledger.NewLedger(pool, ledger.CheckpointSigner{Name: "companyos-ledger", Key: ck})
	if err != nil {
		return res, err
	}

	logf("loading %d receipts into %s …", cfg.Receipts, cfg.DSN)
	res.Load, err = measure("load (generate, sign, COPY)", cfg.Receipts, func() error { return load(ctx, pool, l, signer, cfg, logf) })
	if err != nil {
		return res, err
	}
	if _, err := pool.Exec(ctx, "ANALYZE receipts; ANALYZE merkle_hashes; CHECKPOINT"); err != nil {
		logf("analyze: %v", err) // CHECKPOINT needs privileges some setups lack
	}

	res.BundlePath = filepath.Join(cfg.Dir, "bundle.tar.gz")
	keys := keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}
	from, to := t0, t0.Add(time.Duration(cfg.Receipts+1)*time.Millisecond)
	logf("exporting …")
	res.Export, err = measure("export (Postgres → bundle file)", cfg.Receipts, func() error {
		defer profile(cfg.ProfileDir, "export.pprof")()
		f, err := os.Create(res.BundlePath)
		if err != nil {
			return err
		}
		defer f.Close()
		w := bufio.NewWriterSize(f, 1<<20)
		if _, err := audit.Export(ctx, audit.ExportConfig{Ledger: l, Tenant: tenant, From: from, To: to, Keys: keys, Out: w,
			GeneratedBy: "auditbench", TempDir: cfg.Dir, Workers: cfg.Workers}); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		return res, err
	}
	if fi, err := os.Stat(res.BundlePath); err == nil {
		res.BundleBytes = fi.Size()
	}

	pub, msgs, sigs, err := signedMessages(res.BundlePath, signer)
	if err != nil {
		return res, err
	}
	bestVerify, bestBare, bestVerifyCPU, bestBareCPU := 0.0, 0.0, 0.0, 0.0
	for round := range cfg.Rounds {
		logf("round %d: verify …", round+1)
		v, err := measure("audit.Verify (bundle file)", cfg.Receipts, func() error {
			if round == 0 {
				defer profile(cfg.ProfileDir, "verify.pprof")()
			}
			f, err := os.Open(res.BundlePath)
			if err != nil {
				return err
			}
			defer f.Close()
			rep, err := audit.Verify(f, audit.VerifyOptions{Strict: true, Workers: cfg.Workers})
			if err == nil && rep.Receipts != int64(cfg.Receipts) {
				err = fmt.Errorf("verified %d receipts, want %d", rep.Receipts, cfg.Receipts)
			}
			return err
		})
		if err != nil {
			return res, err
		}
		logf("round %d: bare ed25519 loop …", round+1)
		b, err := measure(fmt.Sprintf("bare ed25519.Verify, %d goroutines", cfg.Workers), cfg.Receipts, func() error {
			return bareLoop(pub, msgs, sigs, cfg.Workers)
		})
		if err != nil {
			return res, err
		}
		res.Verify, res.Bare = append(res.Verify, v), append(res.Bare, b)
		res.RoundRatios = append(res.RoundRatios, [2]float64{v.PerSecond / b.PerSecond, v.PerCPUSecond / b.PerCPUSecond})
		bestVerify, bestBare = max(bestVerify, v.PerSecond), max(bestBare, b.PerSecond)
		bestVerifyCPU, bestBareCPU = max(bestVerifyCPU, v.PerCPUSecond), max(bestBareCPU, b.PerCPUSecond)
	}
	res.VerifyOfBare, res.VerifyOfBareCPU = bestVerify/bestBare, bestVerifyCPU/bestBareCPU
	return res, nil
}

// t0 is created_at of seq 1; receipts are 1 ms apart (audittest's default step).
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func load(ctx context.Context, pool *pgxpool.Pool, l *ledger.Ledger, signer *events.Signer, cfg Config, logf func(string, ...any)) error {
	chain := audittest.NewChain(tenant, signer, t0)
	every := max(cfg.Receipts/cfg.Checkpoints, 1)
	return audittest.Load(ctx, audittest.LoadConfig{Pool: pool, Ledger: l, Chain: chain, Receipts: cfg.Receipts, CheckpointEvery: every,
		Workers: cfg.Workers, Progress: func(done int) {
			if done%every == 0 || done == cfg.Receipts {
				logf("  %d/%d receipts loaded", done, cfg.Receipts)
			}
		}})
}

// signedMessages reads the bundle's receipts back: the DSSE PAE message and
// signature of each, for the bare loop.
func signedMessages(path string, signer *events.Signer) (ed25519.PublicKey, [][]byte, [][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	var msgs, sigs [][]byte
	err = audit.ReadReceipts(f, func(l audit.ReceiptLine) error {
		env, err := events.ParseEnvelope(l.Envelope)
		if err != nil {
			return err
		}
		msgs = append(msgs, events.PAE(env.PayloadType, env.Payload))
		sigs = append(sigs, env.Signatures[0].Sig)
		return nil
	})
	key, _ := keyfile.KeySet{Keys: []keyfile.PublicKey{signer.Public()}}.Lookup(signer.KeyID())
	return key, msgs, sigs, err
}

// bareLoop verifies every signature, split over workers goroutines: the
// floor any verifier's cost is measured against.
func bareLoop(pub ed25519.PublicKey, msgs, sigs [][]byte, workers int) error {
	var wg sync.WaitGroup
	bad := make([]int, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(msgs); i += workers {
				if !ed25519.Verify(pub, msgs[i], sigs[i]) {
					bad[w]++
				}
			}
		}()
	}
	wg.Wait()
	for _, n := range bad {
		if n > 0 {
			return fmt.Errorf("bare loop: %d signatures do not verify", n)
		}
	}
	return nil
}

// profile starts a CPU profile into dir/name (when dir is set) and returns
// the function that stops it.
func profile(dir, name string) func() {
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// measure runs fn and records wall time, this process's CPU and the
// machine's busy CPU over it.
func measure(name string, receipts int, fn func() error) (Phase, error) {
	runtime.GC()
	cpu0, busy0 := processCPU(), machineBusy()
	start := time.Now()
	err := fn()
	wall := time.Since(start).Seconds()
	cpu1, busy1 := processCPU(), machineBusy()
	return Phase{Name: name, Seconds: wall, PerSecond: float64(receipts) / wall, ProcessCPU: (cpu1 - cpu0) / wall,
		PerCPUSecond: float64(receipts) / max(cpu1-cpu0, 1e-9), MachineCPU: (busy1 - busy0) / wall}, err
}

func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// machineBusy is the busy CPU seconds of all cores since boot (/proc/stat).
func machineBusy() float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line)
	var busy float64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, _ := strconv.ParseFloat(f, 64)
		busy += v
	}
	return busy / 100 // USER_HZ
}

// WriteText prints the results as a table.
func (r Result) WriteText(w io.Writer) {
	fmt.Fprintf(w, "%d receipts, bundle %.1f MB, %d cores, %d workers, %s\n\n", r.Receipts, float64(r.BundleBytes)/1e6, r.Cores, r.Workers, r.GoVersion)
	fmt.Fprintf(w, "%-40s %8s %11s %13s %8s %8s\n", "phase", "seconds", "receipts/s", "per CPU-sec", "process", "machine")
	row := func(p Phase) {
		fmt.Fprintf(w, "%-40s %8.2f %11.0f %13.0f %7.2fc %7.2fc\n", p.Name, p.Seconds, p.PerSecond, p.PerCPUSecond, p.ProcessCPU, p.MachineCPU)
	}
	row(r.Load)
	row(r.Export)
	for i := range r.Verify {
		row(r.Verify[i])
		row(r.Bare[i])
	}
	fmt.Fprintf(w, "\nverify / bare ed25519, best rounds: %.1f%% by wall clock, %.1f%% by CPU time\n", 100*r.VerifyOfBare, 100*r.VerifyOfBareCPU)
	for i, rr := range r.RoundRatios {
		fmt.Fprintf(w, "  round %d: %.1f%% by wall clock, %.1f%% by CPU time\n", i+1, 100*rr[0], 100*rr[1])
	}
}
