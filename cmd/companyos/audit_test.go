package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/companyos/companyos/audit"
	"github.com/companyos/companyos/audit/audittest"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/internal/stores"
	"github.com/companyos/companyos/projections/ledger"
)

// auditFixture is a dev data dir (signing.key, ledger.key) and a ledger
// database holding 40 receipts of tenant acme on 2026-01-10.
func auditFixture(t *testing.T) (ctx context.Context, dsn, dataDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dsn = stores.TestPostgres(t)
	pool, err := stores.EnsurePostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := ledger.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	dataDir = t.TempDir()
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	for name, k := range map[string]ed25519.PrivateKey{"signing.key": sk, "ledger.key": ck} {
		if err := keyfile.Write(filepath.Join(dataDir, name), k); err != nil {
			t.Fatal(err)
		}
	}
	l, err := ledger.NewLedger(pool, ledger.CheckpointSigner{Name: "companyos-ledger", Key: ck})
	if err != nil {
		t.Fatal(err)
	}
	chain := audittest.NewChain("acme", events.NewSigner(sk), time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC))
	if err := audittest.Load(ctx, audittest.LoadConfig{Pool: pool, Ledger: l, Chain: chain, Receipts: 40, CheckpointEvery: 15}); err != nil {
		t.Fatal(err)
	}
	return ctx, dsn, dataDir
}

func TestAuditCLI(t *testing.T) {
	ctx, dsn, dataDir := auditFixture(t)
	out := filepath.Join(t.TempDir(), "bundle.tar.gz")
	var stdout, stderr bytes.Buffer
	// A date in --to is the end of that day: 2026-01-10 includes the receipts.
	err := runExport(ctx, []string{"--pg-dsn", dsn, "--data-dir", dataDir, "--tenant", "acme", "--from", "2026-01-10", "--to", "2026-01-10",
		"--out", out, "--json"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, stderr.String())
	}
	var res audit.ExportResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || res.Receipts != 40 || res.TreeSize != 40 || res.Checkpoints != 3 {
		t.Fatalf("export result %+v (%v)\n%s", res, err, stdout.String())
	}
	if !strings.Contains(stderr.String(), "exported 40 receipts (seq 1…40) of tenant acme") {
		t.Fatalf("summary: %s", stderr.String())
	}

	verify := func(args ...string) (int, string) {
		var o, e bytes.Buffer
		code := runVerify(ctx, args, &o, &e)
		return code, o.String() + e.String()
	}
	if code, text := verify("--bundle", out, "--strict"); code != 0 || !strings.Contains(text, "VERIFIED: 40 receipts") {
		t.Fatalf("verify: exit %d\n%s", code, text)
	}
	code, text := verify("--bundle", out, "--json")
	var rep audit.Report
	if err := json.Unmarshal([]byte(text), &rep); code != 0 || err != nil || !rep.OK || rep.Receipts != 40 {
		t.Fatalf("verify --json: exit %d, %v\n%s", code, err, text)
	}

	// Pinned keys that did not sign this bundle.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	keysFile := filepath.Join(t.TempDir(), "keys.json")
	raw, _ := json.Marshal(keyfile.KeySet{Keys: []keyfile.PublicKey{keyfile.Public(other.Public().(ed25519.PublicKey))}})
	if err := os.WriteFile(keysFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, text := verify("--bundle", out, "--keys", keysFile); code != 12 || !strings.Contains(text, "unknown-key") {
		t.Fatalf("pinned keys: exit %d\n%s", code, text)
	}
	otherVerifier, _ := note.NewEd25519VerifierKey("companyos-ledger", other.Public().(ed25519.PublicKey))
	if code, text := verify("--bundle", out, "--checkpoint-key", otherVerifier); code != 18 {
		t.Fatalf("pinned checkpoint key: exit %d\n%s", code, text)
	}

	// Damaged bundles, missing files, bad flags.
	bundle, _ := os.ReadFile(out)
	truncated := filepath.Join(t.TempDir(), "truncated.tar.gz")
	if err := os.WriteFile(truncated, bundle[:len(bundle)*2/3], 0o644); err != nil {
		t.Fatal(err)
	}
	if code, text := verify("--bundle", truncated); code != 20 {
		t.Fatalf("truncated: exit %d\n%s", code, text)
	}
	if code, text := verify("--bundle", filepath.Join(t.TempDir(), "missing.tar.gz")); code != 1 {
		t.Fatalf("missing file: exit %d\n%s", code, text)
	}
	if code, text := verify(); code != 2 || !strings.Contains(text, "--bundle is required") {
		t.Fatalf("no flags: exit %d\n%s", code, text)
	}
	if code, _ := verify("--bundle", out, "--nonsense"); code != 2 {
		t.Fatalf("unknown flag: exit %d", code)
	}

	// Export errors.
	if err := runExport(ctx, []string{"--pg-dsn", dsn, "--data-dir", dataDir, "--tenant", "acme", "--from", "2025-01-01", "--to", "2025-02-01",
		"--out", out}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "no receipts") {
		t.Fatalf("empty range: %v", err)
	}
	if err := runExport(ctx, []string{"--pg-dsn", dsn, "--from", "yesterday", "--out", out}, &stdout, &stderr); err == nil ||
		!strings.Contains(err.Error(), "--tenant is required") || !strings.Contains(err.Error(), "--from") || !strings.Contains(err.Error(), "--to") {
		t.Fatalf("bad flags: %v", err)
	}
}

// TestAuditCLIHelp checks that --help works and documents every flag and
// every exit code.
func TestAuditCLIHelp(t *testing.T) {
	var o, e bytes.Buffer
	if code := runVerify(context.Background(), []string{"--help"}, &o, &e); code != 0 {
		t.Fatalf("verify --help: exit %d", code)
	}
	for _, c := range audit.Codes() {
		want := fmt.Sprintf("%d", c.ExitCode())
		if !strings.Contains(e.String(), string(c)) || !strings.Contains(e.String(), want) {
			t.Errorf("verify --help does not document %s (exit %s)", c, want)
		}
	}
	for _, f := range []string{"-bundle", "-strict", "-json", "-keys", "-checkpoint-key", "-workers", "-max-problems"} {
		if !strings.Contains(e.String(), f) {
			t.Errorf("verify --help does not document %s", f)
		}
	}
	e.Reset()
	if err := runExport(context.Background(), []string{"--help"}, &o, &e); err != nil {
		t.Fatalf("export --help: %v", err)
	}
	for _, f := range []string{"-postgres-dsn", "-pg-dsn", "-tenant", "-from", "-to", "-out", "-data-dir", "-ledger-key-file", "-signing-key-file", "-keys", "-sbom", "-attestations", "-compression", "-json"} {
		if !strings.Contains(e.String(), f) {
			t.Errorf("export --help does not document %s", f)
		}
	}
}
