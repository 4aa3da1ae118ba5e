package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/companyos/companyos/evidence"

	"github.com/companyos/companyos/audit"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

const auditDefaultDSN = "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable"

const exportUsage = `Usage: companyos export --tenant T --from 2026-01-01 --to 2026-01-31 --out bundle.tar.gz [flags]

Writes the auditor's evidence bundle of one tenant (format: schemas/bundle.v1.md):
the signed receipts created in [from, to) — precisely, every receipt from the
first to the last of them by seq, so the hash chain has no holes — the receipt
verification keys, the signed Merkle checkpoints covering them and the proofs
that tie them together, as a deterministic tar.gz (same ledger state and
flags, same bytes). When no checkpoint covers the last receipt yet, the
ledger signs one. Postgres is only read otherwise.

Verify the bundle anywhere, offline: companyos verify --bundle bundle.tar.gz

Times are RFC 3339 (2026-01-31T12:00:00Z) or a date (UTC). A date in --from
is the start of that day; a date in --to is the END of that day, so
--from 2026-01-01 --to 2026-01-31 is all of January.

Flags (each also COMPANYOS_<NAME>):
`

const verifyUsage = `Usage: companyos verify --bundle bundle.tar.gz [--strict] [--json] [--keys keys.json] [--checkpoint-key KEY]

Verifies an evidence bundle offline — no network, Kafka or Postgres: the
manifest's file hashes; every receipt's DSSE signature (on every core) by a
known key; that each payload is a receipt of the bundle's tenant; seq
continuity; the prev_hash chain; that the receipts are exactly the leaves of
the signed Merkle tree (recomputed, so every receipt is proven included);
consistency between the signed checkpoints (no rollback, no fork); checkpoint
signatures; disclosed values against their commitments; and evidence files
against evidence_hash. Every problem is reported, not only the first.

Without --keys and --checkpoint-key the keys come from the bundle itself:
that proves the bundle is intact and consistent, not who signed it. Pin keys
obtained independently (GET /v1/keys; verifier_key of
GET /v1/provenance/checkpoints/{tenant}).

Exit codes:
   0  everything verifies (with --strict: and no warnings)
   1  the bundle could not be read (I/O error)
   2  usage error
  10  manifest-hash         a file's SHA-256, receipt_count, the seq range or policy_bundles differ from manifest.json
  11  signature             a receipt's signature does not verify
  12  unknown-key           a receipt is signed by no key of the key set
  13  payload               a payload is not a receipt, or its line disagrees with it
      tenant-mismatch       a receipt or checkpoint of another tenant
  14  seq-gap               a seq is missing
      seq-duplicate         a seq appears twice
      seq-reorder           a seq appears after a larger one
  15  chain                 prev_hash is not the hash of the previous receipt (seq 1: not genesis)
  16  inclusion             the receipts are not the leaves of the signed tree
  17  consistency           a checkpoint is not a prefix of the next one
      checkpoint-rollback   a checkpoint smaller than one before it
      checkpoint-fork       two signed roots for one tree size
  18  checkpoint-signature  a checkpoint note does not verify
  19  disclosure            a disclosed value does not match its commitment
  20  malformed             not a readable format-1 bundle
  21  warning, with --strict: extra-file, out-of-range (created_at outside
      [from, to)), stale-checkpoint, empty, unused-evidence
  22  evidence              an evidence file does not hash to its receipt's evidence_hash
When several kinds fail, the exit code is the most fundamental, in this order:
20 10 18 12 11 13 14 15 17 16 19 22 21 (a flipped payload byte breaks the
signature, the next prev_hash and the tree: it exits 11).

Flags (each also COMPANYOS_<NAME>):
`

// runExport is `companyos export`. It returns nil on success and after
// --help; errors are for the caller to print (flag errors are printed by
// the flag package already).
func runExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("companyos export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		postgresDSN, pgDSN, tenant, fromS, toS, out  string
		dataDir, ledgerKeyFile, signingKeyFile, keys string
		sbom, attestations, tempDir                  string
		level                                        int
		asJSON                                       bool
	)
	fs.StringVar(&postgresDSN, "postgres-dsn", auditDefaultDSN, "Postgres DSN of the ledger (read; never created or migrated)")
	fs.StringVar(&pgDSN, "pg-dsn", auditDefaultDSN, "alias of --postgres-dsn, as in the other commands")
	fs.StringVar(&tenant, "tenant", "", "tenant to export (required)")
	fs.StringVar(&fromS, "from", "", "start of the period, inclusive: RFC 3339 or a date (required)")
	fs.StringVar(&toS, "to", "", "end of the period, exclusive: RFC 3339, or a date meaning the end of that day (required)")
	fs.StringVar(&out, "out", "", `bundle file to write, or "-" for stdout (required); written to a temporary file and renamed when complete`)
	fs.StringVar(&dataDir, "data-dir", "./.data", "data directory of the dev deployment, for the default key files")
	fs.StringVar(&ledgerKeyFile, "ledger-key-file", "", "checkpoint signing key of the ledger, PEM PKCS#8 Ed25519 (default <data-dir>/ledger.key); it signs a fresh checkpoint when needed, and its public key goes into keys.json")
	fs.StringVar(&signingKeyFile, "signing-key-file", "", "receipt signing key, PEM PKCS#8 Ed25519 (default <data-dir>/signing.key); only its public key is used, for keys.json")
	fs.StringVar(&keys, "keys", "", `receipt key set file, JSON {"keys":[{"keyid","alg","public_key"}]} as served by GET /v1/keys, instead of --signing-key-file (needed when receipts were signed by several keys)`)
	fs.StringVar(&sbom, "sbom", "", "SBOM file to include as sbom/<name> (optional)")
	fs.StringVar(&attestations, "attestations", "", "attestations file to include as attestations/<name> (optional)")
	fs.IntVar(&level, "compression", 6, "gzip level, 1 (fastest) to 9 (smallest)")
	fs.StringVar(&tempDir, "temp-dir", "", "directory for the compressed spool of receipts (default: the system temporary directory)")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON on stdout (not with --out -)")
	fs.Usage = func() { fmt.Fprint(stderr, exportUsage); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cmdline := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { cmdline[f.Name] = true })
	dsn := pgDSN
	if _, env := os.LookupEnv("COMPANYOS_POSTGRES_DSN"); cmdline["postgres-dsn"] || !cmdline["pg-dsn"] && env {
		dsn = postgresDSN
	}

	var errs []error
	if tenant == "" {
		errs = append(errs, errors.New("--tenant is required"))
	}
	if out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	if out == "-" && asJSON {
		errs = append(errs, errors.New("--json needs stdout, which --out - already uses"))
	}
	if level < 1 || level > 9 {
		errs = append(errs, errors.New("--compression must be between 1 and 9"))
	}
	from, err := parseAuditTime(fromS, false)
	if err != nil {
		errs = append(errs, fmt.Errorf("--from: %w", err))
	}
	to, err := parseAuditTime(toS, true)
	if err != nil {
		errs = append(errs, fmt.Errorf("--to: %w", err))
	}
	if err == nil && !from.Before(to) {
		errs = append(errs, errors.New("--from must be before --to"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	if ledgerKeyFile == "" {
		ledgerKeyFile = filepath.Join(dataDir, "ledger.key")
	}
	cpKey, err := keyfile.Load(ledgerKeyFile)
	if err != nil {
		return fmt.Errorf("--ledger-key-file: %w", err)
	}
	var ks keyfile.KeySet
	if keys != "" {
		if ks, err = keyfile.ReadKeySet(keys); err != nil {
			return fmt.Errorf("--keys: %w", err)
		}
	} else {
		if signingKeyFile == "" {
			signingKeyFile = filepath.Join(dataDir, "signing.key")
		}
		sk, err := keyfile.Load(signingKeyFile)
		if err != nil {
			return fmt.Errorf("--signing-key-file: %w (or pass --keys)", err)
		}
		ks = keyfile.KeySet{Keys: []keyfile.PublicKey{keyfile.Public(sk.Public().(ed25519.PublicKey))}}
	}

	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	l, err := ledger.NewLedger(pool, ledger.CheckpointSigner{Name: "companyos-ledger", Key: cpKey})
	if err != nil {
		return err
	}

	var w io.Writer = stdout
	var f *os.File
	if out != "-" {
		if f, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*.tmp"); err != nil {
			return err
		}
		defer func() {
			if f != nil {
				f.Close()
				os.Remove(f.Name())
			}
		}()
		w = f
	}
	tty := isTerminal(stderr)
	started := time.Now()
	progress := func(done, total int) {
		if tty {
			fmt.Fprintf(stderr, "\rexporting %d/%d receipts (%.0f%%), %.0f/s\033[K", done, total, 100*float64(done)/float64(max(total, 1)),
				float64(done)/max(time.Since(started).Seconds(), 1e-9))
		}
	}
	// Each receipt's evidence (its command bytes, named by evidence_hash)
	// comes from the evidence store; the verifier re-hashes every blob.
	ev, err := evidence.New(evidence.Config{Pool: pool})
	if err != nil {
		return err
	}
	defer ev.Close()
	evidenceOf := func(ctx context.Context, hash string) ([]byte, bool, error) {
		b, err := ev.Get(ctx, hash)
		if errors.Is(err, evidence.ErrNotFound) {
			return nil, false, nil
		}
		return b, err == nil, err
	}
	res, err := audit.Export(ctx, audit.ExportConfig{Ledger: l, Tenant: tenant, From: from, To: to, Keys: ks, Out: w, Progress: progress,
		GeneratedBy: "companyos " + version, SBOM: sbom, Attestations: attestations, CompressionLevel: level, TempDir: tempDir,
		Evidence: evidenceOf})
	if tty {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if f != nil {
		if err := f.Chmod(0o644); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(f.Name(), out); err != nil {
			return err
		}
		f = nil
	}
	signed := ""
	if res.SignedCheckpoint {
		signed = ", signed now"
	}
	fmt.Fprintf(stderr, "exported %d receipts (seq %d…%d) of tenant %s to %s: %.1f MB, %s\n  %d checkpoints (final: tree size %d%s), %.1fs (%.0f receipts/s)\n",
		res.Receipts, res.FirstSeq, res.LastSeq, tenant, out, float64(res.Bytes)/1e6, res.SHA256, res.Checkpoints, res.TreeSize, signed,
		res.ElapsedSeconds, res.ReceiptsPerSecond)
	if asJSON {
		return writeExportResult(stdout, res)
	}
	return nil
}

// parseAuditTime reads RFC 3339 or a date (UTC); endOfDay moves a date to the
// next midnight, so an exclusive bound given as a date includes that day.
func parseAuditTime(s string, endOfDay bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("required")
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor a date (2006-01-02)", s)
	}
	if endOfDay {
		t = t.AddDate(0, 0, 1)
	}
	return t, nil
}

// runVerify is `companyos verify`; it returns the exit code (see verifyUsage).
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		bundle, keys, checkpointKey string
		strict, asJSON              bool
		workers, maxProblems        int
	)
	fs.StringVar(&bundle, "bundle", "", `bundle file, or "-" for stdin (required)`)
	fs.BoolVar(&strict, "strict", false, "fail (exit 21) on warnings too: files the manifest does not list, receipts created outside [from, to), a final checkpoint signed before the last receipt, an empty bundle, unused evidence")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON instead of the summary")
	fs.StringVar(&keys, "keys", "", "pin the receipt keys: a key set file as served by GET /v1/keys (default: the bundle's keys.json)")
	fs.StringVar(&checkpointKey, "checkpoint-key", "", "pin the checkpoint note verifier key, name+hash+base64 (default: the bundle's keys.json)")
	fs.IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "goroutines verifying signatures")
	fs.IntVar(&maxProblems, "max-problems", 20, "problems listed per kind (all are counted)")
	fs.Usage = func() { fmt.Fprint(stderr, verifyUsage); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return audit.ExitOK
		}
		return audit.ExitUsage
	}
	opts := audit.VerifyOptions{Strict: strict, Workers: workers, MaxProblemsPerCode: maxProblems, TrustedCheckpointKey: checkpointKey}
	var errs []error
	if bundle == "" {
		errs = append(errs, errors.New("--bundle is required"))
	}
	if workers < 1 || maxProblems < 1 {
		errs = append(errs, errors.New("--workers and --max-problems must be at least 1"))
	}
	if keys != "" {
		ks, err := keyfile.ReadKeySet(keys)
		if err != nil {
			errs = append(errs, fmt.Errorf("--keys: %w", err))
		}
		opts.TrustedKeys = &ks
	}
	if err := errors.Join(append(errs, opts.Validate())...); err != nil {
		fmt.Fprintf(stderr, "companyos verify: %v\n", err)
		return audit.ExitUsage
	}
	var r io.Reader = os.Stdin
	if bundle != "-" {
		f, err := os.Open(bundle)
		if err != nil {
			fmt.Fprintf(stderr, "companyos verify: %v\n", err)
			return audit.ExitError
		}
		defer f.Close()
		r = f
	}
	if isTerminal(stderr) {
		opts.Progress = func(done, total int) {
			fmt.Fprintf(stderr, "\rverifying %d/%d receipts (%.0f%%)\033[K", done, total, 100*float64(done)/float64(max(total, 1)))
		}
	}
	rep, err := audit.VerifyContext(ctx, r, opts)
	if opts.Progress != nil {
		fmt.Fprint(stderr, "\r\033[K")
	}
	code := audit.ExitCode(err)
	if code == audit.ExitError {
		fmt.Fprintf(stderr, "companyos verify: %v\n", err)
		return code
	}
	if asJSON {
		if err := rep.WriteJSON(stdout); err != nil {
			fmt.Fprintf(stderr, "companyos verify: %v\n", err)
			return audit.ExitError
		}
	} else if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintf(stderr, "companyos verify: %v\n", err)
		return audit.ExitError
	}
	return code
}

func writeExportResult(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
