package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/internal/keyfile"
)

// TestServeAgainstExternalBroker runs `companyos serve` against a Kafka
// cluster it does not own (a kfake broker in the test process), with key
// files provisioned the way an operator would: a command round-trips to a
// signed receipt, and bad tokens are refused.
func TestServeAgainstExternalBroker(t *testing.T) {
	kafkaAddr := freeAddr(t)
	_, portStr, _ := net.SplitHostPort(kafkaAddr)
	port, _ := strconv.Atoi(portStr)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		t.Fatalf("start kfake on %s: %v", kafkaAddr, err)
	}
	t.Cleanup(cluster.Close) // after the server stops (cleanups run last-in first-out)

	dir := t.TempDir()
	_, signingKey, _ := ed25519.GenerateKey(rand.Reader)
	signingKeyFile := filepath.Join(dir, "signing.key")
	if err := keyfile.Write(signingKeyFile, signingKey); err != nil {
		t.Fatal(err)
	}
	_, ledgerKey, _ := ed25519.GenerateKey(rand.Reader)
	ledgerKeyFile := filepath.Join(dir, "ledger.key")
	if err := keyfile.Write(ledgerKeyFile, ledgerKey); err != nil {
		t.Fatal(err)
	}
	keystoreKeyFile := filepath.Join(dir, "keystore.key")
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	if err := os.WriteFile(keystoreKeyFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	_, issuerKey, _ := ed25519.GenerateKey(rand.Reader)
	issuer := auth.NewIssuer("companyos", issuerKey)
	tokenKeys, _ := json.Marshal(issuer.KeySet())
	tokenKeysFile := filepath.Join(dir, "token-keys.json")
	if err := os.WriteFile(tokenKeysFile, tokenKeys, 0o600); err != nil {
		t.Fatal(err)
	}
	token, err := issuer.Issue(auth.IssueRequest{Principal: "user:ops", Tenants: []string{"acme"}, Roles: []string{"admin"}, MFA: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, err := auth.NewIssuer("companyos", otherKey).Issue(auth.IssueRequest{Principal: "user:ops", Tenants: []string{"acme"}, Roles: []string{"admin"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	s := &server{t: t, DataDir: filepath.Join(dir, "data"), HTTPAddr: freeAddr(t), MetricsAddr: freeAddr(t), KafkaAddr: kafkaAddr}
	s.args = append([]string{"serve",
		"--kafka-brokers=" + kafkaAddr,
		"--signing-key-file=" + signingKeyFile,
		"--ledger-key-file=" + ledgerKeyFile,
		"--keystore-key-file=" + keystoreKeyFile,
		"--token-keys-file=" + tokenKeysFile,
		"--replication-factor=1",
		"--partitions=3",
		"--instance-id=e2e-serve",
		"--data-dir=" + s.DataDir,
		"--http-addr=" + s.HTTPAddr,
		"--metrics-addr=" + s.MetricsAddr,
		"--shutdown-grace=5s",
	}, storeArgs(t)...)
	s.register()
	s.start()

	// /v1/keys serves the provisioned signing key.
	keysJSON := s.get("/v1/keys")
	var keys keyfile.KeySet
	if err := json.Unmarshal(keysJSON, &keys); err != nil {
		t.Fatal(err)
	}
	wantKeyID := keyfile.KeyID(signingKey.Public().(ed25519.PublicKey))
	if _, ok := keys.Lookup(wantKeyID); !ok || len(keys.Keys) != 1 {
		t.Fatalf("GET /v1/keys = %s, want exactly the provisioned key %s", keysJSON, wantKeyID)
	}

	body := `{"tenant":"acme","type":"entity.create","payload":{"id":"svc:billing","kind":"service"}}`
	res := s.mustPost(token, "serve-1", body, http.StatusCreated)
	if res.Decision != "allow" || res.Seq != 1 || !strings.HasPrefix(res.ReceiptID, "rcpt_") {
		t.Errorf("201 body %s: want decision allow, seq 1, a receipt id", res.Body)
	}
	again := s.mustPost(token, "serve-1", body, http.StatusCreated)
	if again.ReceiptID != res.ReceiptID || !again.Replayed {
		t.Errorf("retry with the same Idempotency-Key: receipt %s replayed %v, want %s replayed", again.ReceiptID, again.Replayed, res.ReceiptID)
	}

	// The receipt is in the external cluster and verifies with the provisioned key.
	recs := readEvents(t, kafkaAddr)
	if len(recs) != 1 {
		t.Fatalf("the external cluster holds %d receipts, want 1", len(recs))
	}
	v, err := newReceiptVerifier(keysJSON)
	if err != nil {
		t.Fatal(err)
	}
	r, err := v.verify(recs[0].Value)
	if err != nil {
		t.Fatalf("receipt in the external cluster: %v", err)
	}
	if r.ID != res.ReceiptID || r.Actor != "user:ops" || r.Tenant != "acme" {
		t.Errorf("receipt %s by %s in %s, want %s by user:ops in acme", r.ID, r.Actor, r.Tenant, res.ReceiptID)
	}

	// Bad tokens: unknown signing key, garbage, none.
	for name, tok := range map[string]string{"forged": forged, "garbage": "not-a-token", "missing": ""} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := s.postCommand(ctx, http.DefaultClient, tok, "serve-bad-"+name, []byte(body))
		cancel()
		if err != nil {
			t.Fatalf("%s token: %v", name, err)
		}
		if got.Status != http.StatusUnauthorized {
			t.Errorf("%s token: status %d, want 401; body %s", name, got.Status, got.Body)
		}
	}
}

// TestServeValidate checks `companyos serve --validate`: a missing required
// flag is named and exits non-zero; a complete configuration exits 0.
func TestServeValidate(t *testing.T) {
	code, _, stderr := runCLI(t, 10*time.Second, "serve", "--validate", "--signing-key-file=/nonexistent/k", "--token-keys-file=/nonexistent/t")
	if code == 0 || !strings.Contains(stderr, "--kafka-brokers") {
		t.Errorf("serve --validate without --kafka-brokers: exit %d, stderr:\n%s\nwant non-zero naming --kafka-brokers", code, stderr)
	}
	code, _, stderr = runCLI(t, 10*time.Second, "serve", "--validate")
	for _, flag := range []string{"--kafka-brokers", "--signing-key-file", "--token-keys-file", "--ledger-key-file", "--keystore-key-file"} {
		if code == 0 || !strings.Contains(stderr, flag) {
			t.Errorf("serve --validate with nothing set: exit %d, stderr:\n%s\nwant non-zero naming %s", code, stderr, flag)
		}
	}
	code, _, stderr = runCLI(t, 10*time.Second, "serve", "--validate", "--kafka-brokers=127.0.0.1:1",
		"--signing-key-file=/nonexistent/k", "--token-keys-file=/nonexistent/t", "--ledger-key-file=/nonexistent/l",
		"--keystore-key-file=/nonexistent/s")
	if code != 0 || !strings.Contains(stderr, "valid") {
		t.Errorf("serve --validate with every required flag: exit %d, stderr:\n%s\nwant 0", code, stderr)
	}
}
