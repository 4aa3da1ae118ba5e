package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/evidence"
)

const evidenceUsage = `Usage: companyos evidence <command> [flags]

Operates the content-addressed evidence store in Postgres (the bytes each
receipt's evidence_hash commits to).

Commands:
  compact   pack small loose blobs into zstd packs (safe while the server runs)
  stats     count blobs, raw and stored bytes, packs
  get       print the evidence stored under a hash: companyos evidence get sha256:<hex> [--out file]

Run "companyos evidence <command> --help" for its flags.
`

const defaultEvidenceDSN = "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable"

// runEvidence implements "companyos evidence …".
func runEvidence(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, evidenceUsage)
		return 2
	}
	switch args[0] {
	case "compact":
		return runEvidenceCompact(ctx, args[1:], stdout, stderr)
	case "stats":
		return runEvidenceStats(ctx, args[1:], stdout, stderr)
	case "get":
		return runEvidenceGet(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, evidenceUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "companyos evidence: unknown command %q\n\n%s", args[0], evidenceUsage)
		return 2
	}
}

// evidenceFlags are the flags every evidence command takes.
type evidenceFlags struct {
	dsn     string
	timeout time.Duration
}

func newEvidenceFlagSet(name, usage string, timeout time.Duration, stderr io.Writer) (*flag.FlagSet, *evidenceFlags) {
	fs := flag.NewFlagSet("companyos evidence "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f evidenceFlags
	fs.StringVar(&f.dsn, "pg-dsn", defaultEvidenceDSN, "Postgres DSN of the CompanyOS database (migrated with companyos migrate)")
	fs.DurationVar(&f.timeout, "timeout", timeout, "give up after this long (0: no limit)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage+"\nFlags (each also COMPANYOS_<NAME>):\n")
		fs.PrintDefaults()
	}
	return fs, &f
}

// openEvidence connects to an existing, migrated database. Unlike migrate
// it never creates the database: a mistyped DSN should fail, not create one.
func openEvidence(ctx context.Context, f *evidenceFlags) (*evidence.Store, func(), error) {
	cfg, err := pgxpool.ParseConfig(f.dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("--pg-dsn: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("connect postgres %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	s, err := evidence.New(evidence.Config{Pool: pool})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return s, func() { s.Close(); pool.Close() }, nil
}

// evidenceErr adds a hint when the evidence tables do not exist yet.
func evidenceErr(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return err.Error() + " (the evidence tables are missing: run companyos migrate)"
	}
	return err.Error()
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

const evidenceCompactUsage = `Usage: companyos evidence compact [--json] [--max-blob-size N] [--pack-target N]

Moves loose evidence blobs of at most --max-blob-size bytes into packs of
about --pack-target raw bytes, each one zstd stream, and prints what it saved.
Each pack commits on its own, so it is safe to run while the server writes
and to interrupt. Exits 1 when a loose blob fails verification (it is left
in place and counted as corrupt).
`

func runEvidenceCompact(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, f := newEvidenceFlagSet("compact", evidenceCompactUsage, 0, stderr)
	var opts evidence.CompactOptions
	var asJSON bool
	fs.IntVar(&opts.MaxBlobSize, "max-blob-size", evidence.DefaultMaxBlobSize, "pack loose blobs of at most this many raw bytes")
	fs.IntVar(&opts.PackTarget, "pack-target", evidence.DefaultPackTarget, "close a pack once it holds this many raw bytes")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos evidence compact: %v\n", err)
		return 2
	}
	ctx, cancel := withTimeout(ctx, f.timeout)
	defer cancel()
	s, closeStore, err := openEvidence(ctx, f)
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence compact: %v\n", err)
		return 1
	}
	defer closeStore()
	rep, err := s.Compact(ctx, opts)
	// A failed run still committed whole packs: report them too.
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		fmt.Fprintf(stdout, "packed %d blobs into %d packs in %s\n", rep.BlobsPacked, rep.Packs, rep.Duration.Round(time.Millisecond))
		if rep.BlobsPacked > 0 {
			fmt.Fprintf(stdout, "raw %s → packs %s: %.1f%% smaller than raw (loose frames were %s, %.1f%% smaller than those)\n",
				humanBytes(rep.RawBytes), humanBytes(rep.PackedBytes), rep.ReductionPct, humanBytes(rep.LooseBytes), rep.ReductionVsLoosePct)
		}
		if rep.DuplicatesDropped > 0 {
			fmt.Fprintf(stdout, "dropped %d loose copies of already packed blobs\n", rep.DuplicatesDropped)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence compact: %s\n", evidenceErr(err))
		return 1
	}
	if rep.CorruptSkipped > 0 {
		fmt.Fprintf(stderr, "companyos evidence compact: %d loose blobs failed verification and were left in place (companyos evidence get <hash> reports which)\n", rep.CorruptSkipped)
		return 1
	}
	return 0
}

const evidenceStatsUsage = `Usage: companyos evidence stats [--json]

Counts the stored evidence: blobs (loose and packed), raw bytes, stored
(compressed) bytes, packs, and the tables' size on disk. It scans the
tables, so it takes a while on a large store.
`

func runEvidenceStats(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, f := newEvidenceFlagSet("stats", evidenceStatsUsage, time.Minute, stderr)
	var asJSON bool
	fs.BoolVar(&asJSON, "json", false, "print the stats as JSON")
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos evidence stats: %v\n", err)
		return 2
	}
	ctx, cancel := withTimeout(ctx, f.timeout)
	defer cancel()
	s, closeStore, err := openEvidence(ctx, f)
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence stats: %v\n", err)
		return 1
	}
	defer closeStore()
	st, err := s.Stats(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence stats: %s\n", evidenceErr(err))
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
		return 0
	}
	saved := ""
	if st.RawBytes > 0 {
		saved = fmt.Sprintf(", %.1f%% smaller than raw", 100*(1-float64(st.StoredBytes)/float64(st.RawBytes)))
	}
	fmt.Fprintf(stdout, "blobs         %d (loose %d, packed %d)\n", st.Blobs, st.LooseBlobs, st.PackedBlobs)
	fmt.Fprintf(stdout, "raw bytes     %d (%s)\n", st.RawBytes, humanBytes(st.RawBytes))
	fmt.Fprintf(stdout, "stored bytes  %d (%s: loose %s, packs %s%s)\n", st.StoredBytes, humanBytes(st.StoredBytes),
		humanBytes(st.LooseStoredBytes), humanBytes(st.PackStoredBytes), saved)
	fmt.Fprintf(stdout, "packs         %d\n", st.Packs)
	fmt.Fprintf(stdout, "on disk       %d (%s: rows, indexes and TOAST, dead rows until VACUUM)\n", st.TableBytes, humanBytes(st.TableBytes))
	return 0
}

const evidenceGetUsage = `Usage: companyos evidence get sha256:<hex> [--out file]

Prints the evidence stored under the hash (a receipt's evidence_hash) to
stdout, or writes it to --out (mode 0600). The bytes are verified against the
hash first. Exits 1 when the hash is not stored or its bytes are corrupt.
`

func runEvidenceGet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, f := newEvidenceFlagSet("get", evidenceGetUsage, time.Minute, stderr)
	var out string
	fs.StringVar(&out, "out", "", "write the evidence to this file instead of stdout")
	// The hash may come before or after the flags: parse up to it, take it,
	// then parse the rest (flags set in either part count as set).
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos evidence get: %v\n", err)
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "companyos evidence get: a hash is required\n\n"+evidenceGetUsage)
		return 2
	}
	hash := fs.Arg(0)
	if err := parse(fs, fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "companyos evidence get: %v\n", err)
		return 2
	}
	if _, err := evidence.ParseHash(hash); err != nil {
		fmt.Fprintf(stderr, "companyos evidence get: %v\n", err)
		return 2
	}
	ctx, cancel := withTimeout(ctx, f.timeout)
	defer cancel()
	s, closeStore, err := openEvidence(ctx, f)
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence get: %v\n", err)
		return 1
	}
	defer closeStore()
	b, err := s.Get(ctx, hash)
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence get: %s\n", evidenceErr(err))
		return 1
	}
	if out != "" {
		err = os.WriteFile(out, b, 0o600)
	} else {
		_, err = stdout.Write(b)
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos evidence get: %v\n", err)
		return 1
	}
	return 0
}

// humanBytes formats n in decimal units (kB, MB, GB), as the bench reports do.
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTP"[exp])
}
