package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/companyos/companyos/policy"
	"github.com/companyos/companyos/schemas"
)

func runPolicyArgs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runPolicy(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestPolicyHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"test", "--help"}, {"coverage", "--help"}, {"docs", "--help"}} {
		code, stdout, stderr := runPolicyArgs(t, args...)
		if code != 0 || !strings.Contains(stdout+stderr, "Usage: companyos policy") {
			t.Errorf("policy %s: exit %d, output:\n%s%s", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"test", "--no-such-flag"}, {"docs"}, {"test", "extra"}} {
		if code, _, _ := runPolicyArgs(t, args...); code != 2 {
			t.Errorf("policy %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
	// --update cannot write into the embedded bundle.
	if code, _, stderr := runPolicyArgs(t, "test", "--update"); code != 2 || !strings.Contains(stderr, "--bundle") {
		t.Errorf("policy test --update without a directory: exit %d, %s", code, stderr)
	}
}

func TestPolicyTestEmbedded(t *testing.T) {
	code, stdout, stderr := runPolicyArgs(t, "test")
	if code != 0 || !strings.Contains(stdout, "ok: ") {
		t.Fatalf("policy test: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = runPolicyArgs(t, "test", "--json")
	var rep policy.ScenarioReport
	if err := json.Unmarshal([]byte(stdout), &rep); code != 0 || err != nil || rep.Failed != 0 || rep.Passed == 0 {
		t.Errorf("policy test --json: exit %d, %v, %+v", code, err, rep)
	}
}

// copyBundle writes the embedded bundle to a directory.
func copyBundle(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src, err := fs.Sub(schemas.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(dir, src); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPolicyTestUpdate(t *testing.T) {
	dir := copyBundle(t)
	golden := filepath.Join(dir, "scenarios", "golden", "entity-create-admin-same-region.json")
	good, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(golden, bytes.Replace(good, []byte("may perform"), []byte("may do"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "scenarios", "golden", "gone.json")
	if err := os.WriteFile(stale, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	code, stdout, _ := runPolicyArgs(t, "test", "--bundle", dir)
	if code != 1 || !strings.Contains(stdout, "FAIL  entity-create-admin-same-region") ||
		!strings.Contains(stdout, "-       \"message\": \"role \\\"admin\\\" may do") || !strings.Contains(stdout, "STALE golden/gone.json") {
		t.Fatalf("tampered golden: exit %d\n%s", code, stdout)
	}
	code, stdout, stderr := runPolicyArgs(t, "test", "--bundle", dir, "--update")
	if code != 0 || !strings.Contains(stdout, "wrote   ") || !strings.Contains(stdout, "removed ") {
		t.Fatalf("--update: exit %d\n%s%s", code, stdout, stderr)
	}
	if got, _ := os.ReadFile(golden); !bytes.Equal(got, good) {
		t.Errorf("golden not restored:\n%s", got)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("stale golden not removed")
	}

	// A wrong expectation is not fixed by --update.
	f := filepath.Join(dir, "scenarios", "extra.yaml")
	if err := os.WriteFile(f, []byte("scenarios:\n- {name: wrong, action: entity.create, principal: admin, expect: {allow: false}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, _ := runPolicyArgs(t, "test", "--bundle", dir, "--update"); code != 1 || !strings.Contains(stdout, "decision: want deny, got allow") {
		t.Errorf("wrong expectation with --update: exit %d\n%s", code, stdout)
	}
}

func TestPolicyCoverage(t *testing.T) {
	code, stdout, stderr := runPolicyArgs(t, "coverage")
	if code != 0 || !strings.Contains(stdout, "privileged actions gated: ") {
		t.Fatalf("policy coverage: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = runPolicyArgs(t, "coverage", "--privileged", "tenant.destroy")
	if code != 1 || !strings.Contains(stdout, "UNGATED tenant.destroy") {
		t.Errorf("an ungated extra action: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = runPolicyArgs(t, "coverage", "--json", "--min-lines", "100.1")
	var rep policy.CoverageReport
	if err := json.Unmarshal([]byte(stdout), &rep); code != 1 || err != nil || rep.Lines.Percent == 0 {
		t.Errorf("policy coverage --json --min-lines 100.1: exit %d, %v", code, err)
	}
}

func TestPolicyDocs(t *testing.T) {
	out := filepath.Join(t.TempDir(), "site")
	code, stdout, stderr := runPolicyArgs(t, "docs", "--out", out)
	if code != 0 {
		t.Fatalf("policy docs: exit %d\n%s%s", code, stdout, stderr)
	}
	index, err := os.ReadFile(filepath.Join(out, "index.html"))
	if err != nil || !bytes.Contains(index, []byte("admin_all")) {
		t.Errorf("index.html: %v", err)
	}
}
