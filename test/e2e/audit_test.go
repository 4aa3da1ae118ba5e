package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The auditor's path with the real binary: commands become receipts, the
// ledger projects them, `companyos export` writes a bundle, `companyos
// verify --strict --json` verifies it offline (exit 0, and twice the same
// bytes for the same input), a flipped byte fails it with a non-zero exit,
// and `companyos replay` finds the ledger consistent with the log.
func TestExportVerifyReplayWithTheBinary(t *testing.T) {
	s := startDev(t)
	ctx := context.Background()
	client := &http.Client{Timeout: 10 * time.Second}
	var last cmdResult
	for i := range 20 {
		body := fmt.Sprintf(`{"tenant":"audit-1","type":"entity.create","payload":{"id":"user:u%d","kind":"user","attrs":{"email":"u%d@example.com","region":"eu"}}}`, i, i)
		res, err := s.postCommand(ctx, client, s.AdminToken, "", []byte(body))
		if err != nil || res.Status != 201 {
			t.Fatalf("command %d: %v %d %s", i, err, res.Status, res.Body)
		}
		last = res
	}
	// Wait until the ledger has the last receipt.
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", s.url("/v1/provenance/receipts/"+last.ReceiptID), nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the ledger never projected the receipts")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var pg string
	for _, a := range s.args {
		if v, ok := strings.CutPrefix(a, "--pg-dsn="); ok {
			pg = v
		}
	}
	dir := t.TempDir()
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	export := func(out string) {
		code, stdout, stderr := runCLI(t, 2*time.Minute, "export", "--data-dir="+s.DataDir, "--pg-dsn="+pg, "--tenant=audit-1",
			"--from="+from, "--to="+to, "--out="+out)
		if code != 0 {
			t.Fatalf("export: exit %d\n%s%s", code, stdout, stderr)
		}
	}
	a, b := filepath.Join(dir, "a.tar.gz"), filepath.Join(dir, "b.tar.gz")
	export(a)
	export(b)
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if len(ba) == 0 || string(ba) != string(bb) {
		t.Fatalf("export is not deterministic: %d vs %d bytes", len(ba), len(bb))
	}
	// The bundle carries each receipt's evidence blob (re-hashed by verify).
	gz, err := gzip.NewReader(bytes.NewReader(ba))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	blobs := 0
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if strings.HasPrefix(h.Name, "evidence/") {
			blobs++
		}
	}
	if blobs != 20 {
		t.Fatalf("bundle has %d evidence blobs, want 20", blobs)
	}
	code, stdout, stderr := runCLI(t, 2*time.Minute, "verify", "--bundle="+a, "--strict", "--json")
	if code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("verify --json output is not JSON: %v\n%s", err, stdout)
	}
	// A flipped byte in the middle of the bundle: verification fails.
	bad := append([]byte(nil), ba...)
	bad[len(bad)/2] ^= 0x01
	badPath := filepath.Join(dir, "bad.tar.gz")
	if err := os.WriteFile(badPath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCLI(t, 2*time.Minute, "verify", "--bundle="+badPath, "--strict"); code == 0 {
		t.Fatalf("a tampered bundle verified:\n%s%s", stdout, stderr)
	}
	// The audit replay agrees with the live ledger.
	code, stdout, stderr = runCLI(t, 3*time.Minute, "replay", "--data-dir="+s.DataDir, "--pg-dsn="+pg, "--kafka-brokers="+s.KafkaAddr, "--tenant=audit-1")
	if code != 0 {
		t.Fatalf("replay: exit %d\n%s%s", code, stdout, stderr)
	}
}
