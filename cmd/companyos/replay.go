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
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"

	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

// Exit codes of `companyos replay`, most serious first when several apply.
const (
	replayExitOK     = 0 // every envelope and chain verified, the ledger matches the log
	replayExitError  = 1 // the replay could not complete: Kafka, Postgres, key files, output
	replayExitUsage  = 2 // invalid flags
	replayExitDiff   = 3 // the log verified, but the live ledger differs from it
	replayExitBroken = 4 // a signature, an envelope or a chain link does not verify (diff or not)
)

// checkpointNoteName is the note key name the app signs checkpoints with.
const checkpointNoteName = "companyos-ledger"

const replayUsage = `Usage: companyos replay [--tenant pilot-1] [--from-offset N | --from-time T] [--to-offset N | --to-time T] [flags]

The audit replay. It reads companyos.events.v1 from Kafka over the range, in
log order per partition, and:

  1. verifies every envelope's Ed25519 signature against the receipt key set
     (on every core) and every tenant's hash chain, reporting the first broken
     link of each tenant (seq, partition, offset, reason);
  2. rebuilds the range with the ledger projector's own write path into a
     fresh shadow schema replay_<time>_<random> in the ledger database
     (dropped afterwards unless --keep-shadow);
  3. diffs the shadow with the live ledger in SQL: receipts missing (in the
     log, not in the ledger), extra (in the ledger, not in the log) and altered
     (same id, any column differs, envelope bytes included); tenant heads,
     Merkle roots and stored hashes, and the roots of the live checkpoints;
  4. prints a report (human by default, --json for machines), optionally
     signed (--sign) and written to --out.

Ranges: offsets are per partition, "N" for every partition or "P:N,P:N" per
partition; --from-* is inclusive, --to-* exclusive; times are RFC 3339 or Unix
milliseconds and select the first record at or after them. The default range
is the whole log up to the last stable offsets. A range that starts after a
partition's log start anchors each tenant's chain at the first receipt seen
(checked against the ledger's receipt before it); only the replayed receipts
are diffed. Records the live ledger has not projected yet are reported as
pending, not missing.

The receipt keys come from --keys (a JSON key set as served at /v1/keys), or
else from the public half of --signing-key-file (dev: <data-dir>/signing.key).

Signed reports (--sign): a DSSE envelope, JSON {"payloadType","payload","signatures"},
payloadType application/vnd.companyos.replay-report.v1+json, payload the
report's JSON (the fields --json prints), signed with Ed25519 over the DSSE PAE by
the ledger checkpoint key (--ledger-key-file), keyid "ed25519:<hex of the first
16 bytes of SHA-256(public key)>" — the same envelope format as receipts.

Exit status:
  0  everything verified and the ledger matches the log
  1  the replay could not complete (Kafka, Postgres, key files, writing --out)
  2  invalid flags
  3  the log verified, but the ledger differs from it (missing/extra/altered
     receipts, heads, Merkle hashes, roots, checkpoints)
  4  a signature, envelope or chain link does not verify (takes precedence
     over 3)

Flags (each also COMPANYOS_<NAME>):
`

// runReplay is `companyos replay`.
func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := listFlag{"127.0.0.1:9092"}
	var (
		cfg                                        ledger.ReplayConfig
		fromOffset, toOffset, fromTime, toTime     string
		pgDSN, dataDir, keysFile, signingKeyFile   string
		ledgerKeyFile, checkpointVerifier, outPath string
		asJSON, sign, progress                     bool
		timeout                                    time.Duration
	)
	fs.StringVar(&cfg.Tenant, "tenant", "", "replay only this tenant's records (by Kafka key); default every tenant")
	fs.StringVar(&fromOffset, "from-offset", "", `first offset to read: "N" for every partition, or "P:N,P:N" (default: the log start)`)
	fs.StringVar(&fromTime, "from-time", "", "first record time, RFC 3339 or Unix milliseconds (exclusive with --from-offset)")
	fs.StringVar(&toOffset, "to-offset", "", `offset to stop before: "N" or "P:N,P:N" (default: the last stable offset)`)
	fs.StringVar(&toTime, "to-time", "", "stop before the first record at or after this time, RFC 3339 or Unix milliseconds (exclusive with --to-offset)")
	fs.Var(&brokers, "kafka-brokers", "comma-separated seed brokers of the Kafka cluster (dev: the embedded broker)")
	fs.StringVar(&pgDSN, "pg-dsn", "postgres://companyos:companyos@127.0.0.1:5432/companyos?sslmode=disable", "Postgres DSN of the live ledger; the shadow schema is created in the same database")
	fs.StringVar(&dataDir, "data-dir", "./.data", "dev data directory: default location of signing.key and ledger.key")
	fs.StringVar(&keysFile, "keys", "", `receipt key set, JSON {"keys":[{"keyid","alg":"ed25519","public_key"}]} as served at /v1/keys`)
	fs.StringVar(&signingKeyFile, "signing-key-file", "", "receipt signing key, PEM PKCS#8 Ed25519, when --keys is not given; only its public half is used (default <data-dir>/signing.key)")
	fs.StringVar(&ledgerKeyFile, "ledger-key-file", "", "ledger checkpoint key, PEM PKCS#8 Ed25519: signs the report with --sign, and verifies the live checkpoints' signatures (default <data-dir>/ledger.key)")
	fs.StringVar(&checkpointVerifier, "checkpoint-verifier", "", `checkpoint note verifier key "name+hash+key" (default: derived from --ledger-key-file when it exists; without either, checkpoint roots are compared but signatures not checked)`)
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON on stdout instead of the human summary")
	fs.BoolVar(&sign, "sign", false, "sign the JSON report (DSSE, see above) with --ledger-key-file and write the envelope to --out")
	fs.StringVar(&outPath, "out", "", "also write the report to this file: the JSON report, or the signed envelope with --sign (required with --sign)")
	fs.BoolVar(&cfg.KeepShadow, "keep-shadow", false, "keep the shadow schema for inspection instead of dropping it")
	fs.BoolVar(&cfg.VerifyOnly, "verify-only", false, "verify signatures and chains only: no shadow rebuild, no diff")
	fs.IntVar(&cfg.MaxListed, "max-rows", 100, "list at most this many rows of each kind (missing, extra, altered); counts are always exact")
	fs.BoolVar(&progress, "progress", isTerminal(stderr), "progress on stderr: records read/s and ETA (default: when stderr is a terminal)")
	fs.DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	fs.Usage = func() { fmt.Fprint(stderr, replayUsage); fs.PrintDefaults() }
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return replayExitOK
		}
		fmt.Fprintf(stderr, "companyos replay: %v\n", err)
		return replayExitUsage
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "companyos replay: "+format+"\n", a...)
		return replayExitUsage
	}
	var err error
	if fromOffset != "" && fromTime != "" {
		return usage("--from-offset and --from-time are exclusive")
	}
	if toOffset != "" && toTime != "" {
		return usage("--to-offset and --to-time are exclusive")
	}
	if cfg.From.Offsets, err = parseOffsets(fromOffset); err != nil {
		return usage("--from-offset: %v", err)
	}
	if cfg.To.Offsets, err = parseOffsets(toOffset); err != nil {
		return usage("--to-offset: %v", err)
	}
	if cfg.From.Time, err = parseReplayTime(fromTime); err != nil {
		return usage("--from-time: %v", err)
	}
	if cfg.To.Time, err = parseReplayTime(toTime); err != nil {
		return usage("--to-time: %v", err)
	}
	if sign && outPath == "" {
		return usage("--sign needs --out")
	}
	if len(brokers) == 0 {
		return usage("--kafka-brokers: required")
	}
	cfg.Brokers = brokers

	// Keys.
	if cfg.Keys, err = replayKeys(keysFile, signingKeyFile, dataDir); err != nil {
		fmt.Fprintf(stderr, "companyos replay: %v\n", err)
		return replayExitError
	}
	if ledgerKeyFile == "" {
		ledgerKeyFile = filepath.Join(dataDir, "ledger.key")
	}
	var ledgerKey ed25519.PrivateKey
	if sign || checkpointVerifier == "" {
		ledgerKey, err = keyfile.Load(ledgerKeyFile)
		if err != nil && (sign || !errors.Is(err, os.ErrNotExist)) {
			fmt.Fprintf(stderr, "companyos replay: --ledger-key-file: %v\n", err)
			return replayExitError
		}
	}
	if checkpointVerifier == "" && ledgerKey != nil {
		if checkpointVerifier, err = note.NewEd25519VerifierKey(checkpointNoteName, ledgerKey.Public().(ed25519.PublicKey)); err != nil {
			fmt.Fprintf(stderr, "companyos replay: checkpoint verifier: %v\n", err)
			return replayExitError
		}
	}
	cfg.CheckpointVerifier = checkpointVerifier

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	pcfg, err := pgxpool.ParseConfig(pgDSN)
	if err != nil {
		return usage("--pg-dsn: %v", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "companyos replay: postgres: %v\n", err)
		return replayExitError
	}
	defer pool.Close()
	cfg.Pool = pool
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "companyos replay: %v\n", err)
		return replayExitUsage
	}

	if progress {
		tty := isTerminal(stderr)
		cfg.Progress = func(p ledger.ReplayProgress) {
			line := replayProgressLine(p)
			if tty {
				fmt.Fprintf(stderr, "\r%s\033[K", line)
				if p.Phase == "done" {
					fmt.Fprintln(stderr)
				}
			} else if p.Phase != "done" {
				fmt.Fprintln(stderr, line)
			}
		}
	}
	rep, err := ledger.Replay(ctx, cfg)
	if err != nil {
		if progress && isTerminal(stderr) {
			fmt.Fprintln(stderr)
		}
		fmt.Fprintf(stderr, "companyos replay: %v\n", err)
		return replayExitError
	}

	payload, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "companyos replay: encode report: %v\n", err)
		return replayExitError
	}
	payload = append(payload, '\n')
	if asJSON {
		_, _ = stdout.Write(payload)
	} else {
		printReplaySummary(stdout, rep)
	}
	if outPath != "" {
		out := payload
		if sign {
			if out, err = ledger.SignReplayReport(rep, ledgerKey); err != nil {
				fmt.Fprintf(stderr, "companyos replay: %v\n", err)
				return replayExitError
			}
		}
		if err := os.WriteFile(outPath, out, 0o644); err != nil {
			fmt.Fprintf(stderr, "companyos replay: --out: %v\n", err)
			return replayExitError
		}
		if !asJSON {
			what := "report"
			if sign {
				what = "signed report (" + ledger.ReplayReportPayloadType + ", keyid " + keyfile.KeyID(ledgerKey.Public().(ed25519.PublicKey)) + ")"
			}
			fmt.Fprintf(stdout, "wrote %s to %s\n", what, outPath)
		}
	}
	switch {
	case !rep.Verified():
		return replayExitBroken
	case !rep.OK():
		return replayExitDiff
	}
	return replayExitOK
}

// replayKeys loads the receipt key set from keysFile, or else the public
// half of the signing key.
func replayKeys(keysFile, signingKeyFile, dataDir string) (keyfile.KeySet, error) {
	if keysFile != "" {
		ks, err := keyfile.ReadKeySet(keysFile)
		if err != nil {
			return keyfile.KeySet{}, fmt.Errorf("--keys: %w", err)
		}
		return ks, nil
	}
	if signingKeyFile == "" {
		signingKeyFile = filepath.Join(dataDir, "signing.key")
	}
	k, err := keyfile.Load(signingKeyFile)
	if err != nil {
		return keyfile.KeySet{}, fmt.Errorf("receipt keys: %w (pass --keys with the key set from /v1/keys, or --signing-key-file)", err)
	}
	return keyfile.KeySet{Keys: []keyfile.PublicKey{keyfile.Public(k.Public().(ed25519.PublicKey))}}, nil
}

// parseOffsets parses "N" (every partition) or "P:N,P:N".
func parseOffsets(s string) (map[int32]int64, error) {
	if s == "" {
		return nil, nil
	}
	out := map[int32]int64{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		p, o, per := strings.Cut(part, ":")
		if !per {
			p, o = "", part
		}
		off, err := strconv.ParseInt(o, 10, 64)
		if err != nil || off < 0 {
			return nil, fmt.Errorf("%q: want an offset ≥ 0, as N or P:N", part)
		}
		key := ledger.AllPartitions
		if per {
			n, err := strconv.ParseInt(p, 10, 32)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%q: want a partition ≥ 0", part)
			}
			key = int32(n)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("%q: partition given twice", part)
		}
		out[key] = off
	}
	return out, nil
}

// parseReplayTime parses RFC 3339 or Unix milliseconds.
func parseReplayTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want RFC 3339 (2026-01-02T15:04:05Z) or Unix milliseconds", s)
	}
	return t, nil
}

func replayProgressLine(p ledger.ReplayProgress) string {
	switch p.Phase {
	case "diff":
		return fmt.Sprintf("read %d records in %s (%.0f/s); diffing with the live ledger…", p.Records, p.Elapsed.Round(100*time.Millisecond), p.RecordsPerSec)
	case "done":
		return fmt.Sprintf("done: %d records in %s", p.Records, p.Elapsed.Round(100*time.Millisecond))
	}
	line := fmt.Sprintf("read %d/%d records  %.0f/s", p.Records, p.Total, p.RecordsPerSec)
	if p.ETA > 0 {
		line += fmt.Sprintf("  ETA %s", p.ETA.Round(time.Second))
	}
	return line
}

func printReplaySummary(w io.Writer, rep *ledger.ReplayReport) {
	scope := "all tenants"
	if rep.Tenant != "" {
		scope = "tenant " + rep.Tenant
	}
	fmt.Fprintf(w, "replay of %s (cluster %s), %s\n", rep.Topic, rep.Cluster, scope)
	var rs []string
	for _, p := range rep.Partitions {
		r := fmt.Sprintf("%d:[%d,%d)", p.Partition, p.From, p.To)
		if p.DiffTo < p.To && rep.Diff != nil {
			r += fmt.Sprintf(" diffed to %d", p.DiffTo)
		}
		rs = append(rs, r)
	}
	fmt.Fprintf(w, "range     %s", strings.Join(rs, " "))
	if rep.Partial {
		fmt.Fprint(w, " (partial: chains anchored at the first receipt seen)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "read      %d records (%d selected) in %.1fs, %.0f records/s\n", rep.Records, rep.Selected, rep.ReadSeconds, rep.RecordsPerSec)
	if rep.SkippedOffsets > 0 {
		fmt.Fprintf(w, "skipped   %d offsets without a committed record (transaction markers, aborted records)\n", rep.SkippedOffsets)
	}
	fmt.Fprintf(w, "verified  %d signatures, %d chain links over %d tenant(s); %d duplicates\n",
		rep.SignaturesVerified, rep.LinksVerified, rep.Tenants, rep.Duplicates)
	if rep.SignatureFailures+rep.Malformed > 0 || rep.Unchecked > 0 {
		fmt.Fprintf(w, "failed    %d signatures, %d malformed; %d receipts after a broken link not checked\n", rep.SignatureFailures, rep.Malformed, rep.Unchecked)
	}
	if b := rep.FirstBroken; b != nil {
		fmt.Fprintf(w, "FIRST BROKEN LINK  tenant %s seq %d at partition %d offset %d (%s): %s\n", b.Tenant, b.Seq, b.Partition, b.Offset, b.Kind, b.Reason)
		for _, o := range rep.Broken[1:] {
			fmt.Fprintf(w, "  broken  tenant %s seq %d at partition %d offset %d (%s): %s\n", o.Tenant, o.Seq, o.Partition, o.Offset, o.Kind, o.Reason)
		}
	}
	for _, e := range rep.Erasures {
		state := "complete"
		if !e.Complete {
			state = "INCOMPLETE: " + strings.Join(e.Problems, "; ")
		}
		fmt.Fprintf(w, "erasure   tenant %s subject %s: %s\n", e.Tenant, e.Subject, state)
		fmt.Fprintf(w, "  request   %s seq %d by %s (verified %v)\n", e.Request.ID, e.Request.Seq, e.Request.Actor, e.Request.Verified)
		for _, a := range e.Approvals {
			fmt.Fprintf(w, "  approval  %s seq %d by %s (verified %v)\n", a.ID, a.Seq, a.Actor, a.Verified)
		}
		fmt.Fprintf(w, "  manifest  %s seq %d (verified %v): %d receipts' selective values erased\n", e.Manifest.ID, e.Manifest.Seq, e.Manifest.Verified, e.ErasedReceipts)
		for _, k := range e.ShreddedKeys {
			fmt.Fprintf(w, "  key       %d destroyed %v by %s\n", k.KeyID, k.Destroyed, k.ShreddedBy)
		}
	}
	for _, a := range rep.Anchors {
		fmt.Fprintf(w, "anchor    tenant %s after seq %d (prev_hash %s) at partition %d offset %d\n", a.Tenant, a.Seq, a.PrevHash, a.Partition, a.Offset)
	}
	if d := rep.Diff; d != nil {
		kept := "dropped"
		if d.Kept {
			kept = "kept"
		}
		fmt.Fprintf(w, "diff      shadow %s (%s) vs %s: %d receipts rebuilt, %d live in scope: %d missing, %d extra, %d altered\n",
			d.Shadow, kept, d.Live, d.Compared, d.LiveRows, d.Missing, d.Extra, d.Altered)
		fmt.Fprintf(w, "merkle    %d roots, %d stored hashes, %d checkpoints compared; %d stored hashes differ\n",
			d.RootsCompared, d.MerkleCompared, d.CheckpointsChecked, d.MerkleDiffs)
		if d.Pending > 0 {
			fmt.Fprintf(w, "pending   %d records past the live ledger's position: not projected yet, not diffed\n", d.Pending)
		}
		for _, c := range d.Columns {
			fmt.Fprintf(w, "  column  %s\n", c)
		}
		row := func(kind string, r ledger.RowDiff) string {
			return fmt.Sprintf("  %-7s %s  tenant %s seq %d  partition %d offset %d", kind, r.ID, r.Tenant, r.Seq, r.Partition, r.Offset)
		}
		for _, r := range d.MissingRows {
			fmt.Fprintln(w, row("missing", r))
		}
		for _, r := range d.ExtraRows {
			fmt.Fprintln(w, row("extra", r))
		}
		for _, r := range d.AlteredRows {
			var cs []string
			for _, c := range r.Columns {
				v := r.Changes[c]
				cs = append(cs, fmt.Sprintf("%s live %s, log %s", c, quoteOrNull(v[0]), quoteOrNull(v[1])))
			}
			fmt.Fprintf(w, "%s: %s\n", row("altered", r), strings.Join(cs, "; "))
		}
		for _, h := range d.Heads {
			fmt.Fprintf(w, "  %-7s tenant %s %s: live %s, log %s\n", "head", h.Tenant, h.What, h.Live, h.Replay)
		}
		if n := d.Missing + d.Extra + d.Altered; n > int64(len(d.MissingRows)+len(d.ExtraRows)+len(d.AlteredRows)) {
			fmt.Fprintf(w, "  … more rows: raise --max-rows, or use --json\n")
		}
	}
	switch {
	case !rep.Verified():
		fmt.Fprintln(w, "result    VERIFICATION FAILED")
	case !rep.OK():
		fmt.Fprintln(w, "result    DIFF FOUND: the ledger differs from the log")
	default:
		fmt.Fprintln(w, "result    OK: every envelope and chain verified; the ledger matches the log")
	}
}

func quoteOrNull(s *string) string {
	if s == nil {
		return "NULL"
	}
	return strconv.Quote(*s)
}
