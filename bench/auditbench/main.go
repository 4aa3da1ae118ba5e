// Command auditbench measures the audit bundle path on one set of receipts,
// in one run: a bare parallel ed25519.Verify loop over the receipts'
// signatures, audit.Verify of their bundle, and audit.Export of the bundle
// from Postgres. The receipts are generated (validly signed, chained, with a
// real Merkle tree and signed checkpoints) and loaded into a scratch
// database with COPY, in the ledger's table layout.
//
//	go run ./bench/auditbench --receipts 1000000
//
// Results go to stdout (text, or --json). See bench/README.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const defaultDSN = "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("auditbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var adminDSN string
	var keep, asJSON bool
	fs.StringVar(&adminDSN, "pg-dsn", defaultDSN, "Postgres URL of an existing database; a scratch database auditbench_<random> is created on the same server and dropped at the end")
	fs.IntVar(&cfg.Receipts, "receipts", 100000, "receipts to generate (one tenant)")
	fs.IntVar(&cfg.Checkpoints, "checkpoints", 10, "signed checkpoints spread over the range (the last covers every receipt)")
	fs.IntVar(&cfg.Rounds, "rounds", 1, "alternate Verify and the bare loop this many times (the machine is shared: more rounds, less noise)")
	fs.IntVar(&cfg.Workers, "workers", runtime.GOMAXPROCS(0), "goroutines for the bare loop and for Verify")
	fs.StringVar(&cfg.Dir, "dir", "", "where to write the bundle (default: a temporary directory, removed)")
	fs.StringVar(&cfg.ProfileDir, "profile-dir", "", "write CPU profiles of the export and the first verify (export.pprof, verify.pprof) into this directory")
	fs.BoolVar(&keep, "keep", false, "keep the scratch database and the bundle")
	fs.BoolVar(&asJSON, "json", false, "print the results as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.Receipts < 1 || cfg.Checkpoints < 1 || cfg.Rounds < 1 || cfg.Workers < 1 {
		fmt.Fprintln(stderr, "auditbench: --receipts, --checkpoints, --rounds and --workers must be ≥ 1")
		return 2
	}
	var err error
	cfg.DSN, err = scratchDSN(adminDSN)
	if err != nil {
		fmt.Fprintln(stderr, "auditbench:", err)
		return 2
	}
	if cfg.Dir == "" {
		if cfg.Dir, err = os.MkdirTemp("", "auditbench-"); err != nil {
			fmt.Fprintln(stderr, "auditbench:", err)
			return 1
		}
		if !keep {
			defer os.RemoveAll(cfg.Dir)
		}
	}
	if !keep {
		defer func() {
			if err := dropDatabase(context.WithoutCancel(ctx), adminDSN, cfg.DSN); err != nil {
				fmt.Fprintln(stderr, "auditbench:", err)
			}
		}()
	}
	cfg.Log = stderr
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "auditbench:", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.WriteText(stdout)
	}
	if keep {
		fmt.Fprintf(stderr, "kept database %s and bundle %s\n", cfg.DSN, res.BundlePath)
	}
	return 0
}

// scratchDSN returns adminDSN (a URL) pointing at a new database name.
func scratchDSN(adminDSN string) (string, error) {
	u, err := url.Parse(adminDSN)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("--pg-dsn must be a postgres:// URL")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	u.Path = "/auditbench_" + hex.EncodeToString(b[:])
	return u.String(), nil
}

func dropDatabase(ctx context.Context, adminDSN, dsn string) error {
	u, _ := url.Parse(dsn)
	name := strings.TrimPrefix(u.Path, "/")
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	defer conn.Close(ctx)
	for range 20 {
		if _, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err == nil {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("drop %s: %w", name, err)
}
