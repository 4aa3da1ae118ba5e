package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKcatExternalVerifier reads the receipt log with kcat, a Kafka client
// that shares no code with CompanyOS, and checks every line with a verifier
// written here from the format alone (standard library only): DSSE PAE,
// Ed25519 signatures with the keys of GET /v1/keys, per-tenant seq and hash
// chain, and the shape of a policy-deny receipt. It also shows that the
// verifier rejects a tampered payload and a missing receipt.
func TestKcatExternalVerifier(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat is required (Debian package kcat; CI installs it): %v", err)
	}
	s := startDev(t)
	admin := s.AdminToken
	want := map[string]string{} // receipt id → decision
	post := func(token, key, body string, status int) cmdResult {
		res := s.mustPost(token, key, body, status)
		if res.ReceiptID == "" {
			t.Fatalf("POST %s: no receipt_id in %s", body, res.Body)
		}
		want[res.ReceiptID] = res.Decision
		return res
	}
	for _, tenant := range []string{"t1", "t2"} {
		post(admin, tenant+"-1", `{"tenant":"`+tenant+`","type":"entity.create","payload":{"id":"svc:checkout","kind":"service","attrs":{"region":"eu"}}}`, http.StatusCreated)
		post(admin, tenant+"-2", `{"tenant":"`+tenant+`","type":"entity.create","payload":{"id":"db:orders","kind":"db"}}`, http.StatusCreated)
		post(admin, tenant+"-3", `{"tenant":"`+tenant+`","type":"relation.link","payload":{"from":"svc:checkout","rel":"depends_on","to":"db:orders"}}`, http.StatusCreated)
	}
	post(admin, "t1-4", `{"tenant":"t1","type":"entity.update","payload":{"id":"svc:checkout","attrs":{"tier":"gold"}}}`, http.StatusCreated)

	// A principal without roles is denied, and the denial is itself a receipt.
	code, out, errOut := runCLI(t, 20*time.Second, "token", "issue", "--data-dir", s.DataDir, "--principal", "user:bob", "--tenant", "t1")
	if code != 0 {
		t.Fatalf("companyos token issue: exit %d\n%s", code, errOut)
	}
	bob := strings.TrimSpace(out)
	deny := s.mustPost(bob, "bob-1", `{"tenant":"t1","type":"entity.create","payload":{"id":"svc:rogue","kind":"service"}}`, http.StatusForbidden)
	if deny.ReceiptID == "" || deny.Seq == 0 {
		t.Fatalf("403 problem has no receipt_id/seq: %s", deny.Body)
	}
	want[deny.ReceiptID] = "deny"

	keysJSON := s.get("/v1/keys")
	lines := kcatReceipts(t, kcat, s.KafkaAddr)
	if len(lines) != len(want) {
		t.Errorf("kcat read %d receipts, the API answered %d commands", len(lines), len(want))
	}

	v, err := newReceiptVerifier(keysJSON)
	if err != nil {
		t.Fatalf("GET /v1/keys: %v\n%s", err, keysJSON)
	}
	seen := map[string]bool{}
	for i, line := range lines {
		r, err := v.verify(line)
		if err != nil {
			t.Fatalf("kcat line %d: %v\n%s", i+1, err, line)
		}
		seen[r.ID] = true
		if d, ok := want[r.ID]; ok && d != r.Decision {
			t.Errorf("receipt %s: decision %q, the API said %q", r.ID, r.Decision, d)
		}
		if r.ID != deny.ReceiptID {
			continue
		}
		if r.Decision != "deny" || r.Actor != "user:bob" || r.Tenant != "t1" || r.Seq != deny.Seq {
			t.Errorf("deny receipt: decision %q actor %q tenant %q seq %d, want deny user:bob t1 seq %d", r.Decision, r.Actor, r.Tenant, r.Seq, deny.Seq)
		}
		if string(r.Change) != "null" {
			t.Errorf("deny receipt: change = %s, want null", r.Change)
		}
		var rationale []json.RawMessage
		if err := json.Unmarshal(r.Rationale, &rationale); err != nil || len(rationale) == 0 {
			t.Errorf("deny receipt: rationale %s is not a non-empty array (%v)", r.Rationale, err)
		}
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("receipt %s answered by the API is not in the log kcat read", id)
		}
	}
	if heads := v.heads; heads["t1"].seq != 5 || heads["t2"].seq != 3 {
		t.Errorf("chain heads: t1 seq %d, t2 seq %d; want 5 and 3", heads["t1"].seq, heads["t2"].seq)
	}

	// The verifier must be able to fail: one flipped payload byte breaks the
	// signature, and a missing receipt breaks the chain.
	tampered, err := tamperPayload(lines[len(lines)/2])
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyAll(keysJSON, replace(lines, len(lines)/2, tampered)); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("a tampered payload: verifier said %v, want a signature error", err)
	}
	var dropped [][]byte
	dropIdx := -1
	for i, line := range lines {
		if r, _ := v.peek(line); r.Tenant == "t1" && r.Seq == 2 {
			dropIdx = i
			continue
		}
		dropped = append(dropped, line)
	}
	if dropIdx < 0 {
		t.Fatal("no t1 seq 2 receipt to drop")
	}
	if err := verifyAll(keysJSON, dropped); err == nil || !strings.Contains(err.Error(), "seq") {
		t.Errorf("a missing receipt: verifier said %v, want a seq error", err)
	}
	if err := verifyAll(keysJSON, lines); err != nil {
		t.Errorf("untouched lines no longer verify: %v", err)
	}
}

// kcatReceipts runs kcat against the broker and returns one value per line.
func kcatReceipts(t *testing.T, kcat, broker string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-b", broker, "-C", "-t", topicEvents, "-o", "beginning", "-e", "-q", "-f", "%s\n"}
	// isolation.level is a librdkafka consumer property (kcat 1.7 passes any
	// -X through); read_committed keeps aborted transactions out.
	args = append(args, "-X", "isolation.level=read_committed")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kcat, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var lines [][]byte
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 0, 1<<20), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			lines = append(lines, bytes.Clone(sc.Bytes()))
		}
	}
	if len(lines) == 0 {
		t.Fatalf("kcat printed no receipts; stderr:\n%s", stderr.String())
	}
	return lines
}

func replace(lines [][]byte, i int, line []byte) [][]byte {
	out := append([][]byte(nil), lines...)
	out[i] = line
	return out
}

// --- An independent receipt verifier: standard library only. ---------------
//
// It knows the format from the documentation, not from the events package:
// a DSSE envelope {"payloadType","payload"(std base64),"signatures":[{"keyid",
// "sig"(std base64)}]}, Ed25519 over PAE, and a JSON payload whose prev_hash
// is "sha256:"+hex(SHA-256(previous payload of the tenant)).

const receiptPayloadType = "application/vnd.companyos.receipt.v1+json"

type dsseEnvelope struct {
	PayloadType string `json:"payloadType"`
	Payload     string `json:"payload"`
	Signatures  []struct {
		KeyID string `json:"keyid"`
		Sig   string `json:"sig"`
	} `json:"signatures"`
}

type receiptFields struct {
	ID        string          `json:"id"`
	Action    string          `json:"action"`
	Actor     string          `json:"actor"`
	Tenant    string          `json:"tenant"`
	Decision  string          `json:"decision"`
	Seq       uint64          `json:"seq"`
	PrevHash  string          `json:"prev_hash"`
	CommandID string          `json:"command_id"`
	Rationale json.RawMessage `json:"rationale"`
	Change    json.RawMessage `json:"change"`
}

type chainHead struct {
	seq  uint64
	hash string
}

type receiptVerifier struct {
	keys  map[string]ed25519.PublicKey
	heads map[string]chainHead
	ids   map[string]bool
}

func newReceiptVerifier(keysJSON []byte) (*receiptVerifier, error) {
	var ks struct {
		Keys []struct {
			KeyID     string `json:"keyid"`
			Alg       string `json:"alg"`
			PublicKey string `json:"public_key"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(keysJSON, &ks); err != nil {
		return nil, fmt.Errorf("key set: %w", err)
	}
	v := &receiptVerifier{keys: map[string]ed25519.PublicKey{}, heads: map[string]chainHead{}, ids: map[string]bool{}}
	for _, k := range ks.Keys {
		raw, err := base64.StdEncoding.DecodeString(k.PublicKey)
		if k.Alg != "ed25519" || err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key %s: alg %q, %d key bytes, %v", k.KeyID, k.Alg, len(raw), err)
		}
		v.keys[k.KeyID] = ed25519.PublicKey(raw)
	}
	if len(v.keys) == 0 {
		return nil, errors.New("key set has no keys")
	}
	return v, nil
}

func pae(payloadType string, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 " + strconv.Itoa(len(payloadType)) + " " + payloadType + " " + strconv.Itoa(len(body)) + " ")
	b.Write(body)
	return b.Bytes()
}

// open checks the envelope's signatures and returns the payload bytes.
func (v *receiptVerifier) open(line []byte) ([]byte, error) {
	var env dsseEnvelope
	if err := json.Unmarshal(line, &env); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if env.PayloadType != receiptPayloadType {
		return nil, fmt.Errorf("payloadType %q, want %q", env.PayloadType, receiptPayloadType)
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	msg := pae(env.PayloadType, payload)
	verified := 0
	for _, s := range env.Signatures {
		pub, ok := v.keys[s.KeyID]
		if !ok {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil || !ed25519.Verify(pub, msg, sig) {
			return nil, fmt.Errorf("signature by %s does not verify", s.KeyID)
		}
		verified++
	}
	if verified == 0 {
		return nil, fmt.Errorf("no signature by a key of /v1/keys (%d signatures)", len(env.Signatures))
	}
	return payload, nil
}

// peek decodes a line's receipt without checking anything.
func (v *receiptVerifier) peek(line []byte) (receiptFields, error) {
	var env dsseEnvelope
	var r receiptFields
	if err := json.Unmarshal(line, &env); err != nil {
		return r, err
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(payload, &r)
}

// verify checks one line and advances its tenant's chain. Lines of one
// tenant must come in log order.
func (v *receiptVerifier) verify(line []byte) (receiptFields, error) {
	var r receiptFields
	payload, err := v.open(line)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("payload: %w", err)
	}
	if r.ID == "" || r.Tenant == "" || r.CommandID == "" {
		return r, fmt.Errorf("receipt without id/tenant/command_id: %s", payload)
	}
	if r.Decision != "allow" && r.Decision != "deny" {
		return r, fmt.Errorf("receipt %s: decision %q", r.ID, r.Decision)
	}
	if v.ids[r.ID] {
		return r, fmt.Errorf("receipt %s appears twice", r.ID)
	}
	v.ids[r.ID] = true
	h, ok := v.heads[r.Tenant]
	if !ok {
		h = chainHead{hash: "sha256:" + strings.Repeat("0", 64)}
	}
	if r.Seq != h.seq+1 {
		return r, fmt.Errorf("tenant %s: seq %d follows seq %d", r.Tenant, r.Seq, h.seq)
	}
	if r.PrevHash != h.hash {
		return r, fmt.Errorf("tenant %s seq %d: prev_hash %s, want %s", r.Tenant, r.Seq, r.PrevHash, h.hash)
	}
	sum := sha256.Sum256(payload)
	v.heads[r.Tenant] = chainHead{seq: r.Seq, hash: "sha256:" + hex.EncodeToString(sum[:])}
	return r, nil
}

// verifyAll runs a fresh verifier over lines and returns the first error.
func verifyAll(keysJSON []byte, lines [][]byte) error {
	v, err := newReceiptVerifier(keysJSON)
	if err != nil {
		return err
	}
	for i, line := range lines {
		if _, err := v.verify(line); err != nil {
			return fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return nil
}

// tamperPayload flips one byte of a line's payload, keeping the envelope
// well-formed.
func tamperPayload(line []byte) ([]byte, error) {
	var env map[string]any
	if err := json.Unmarshal(line, &env); err != nil {
		return nil, err
	}
	s, _ := env["payload"].(string)
	payload, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(payload) == 0 {
		return nil, fmt.Errorf("tamper: payload %q: %v", s, err)
	}
	payload[len(payload)/2] ^= 0x01
	env["payload"] = base64.StdEncoding.EncodeToString(payload)
	return json.Marshal(env)
}
