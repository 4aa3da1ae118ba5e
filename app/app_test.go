package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/companyos/companyos/app"
	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/internal/stores"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type stack struct {
	t                      *testing.T
	app                    *app.App
	base                   string
	admin                  string
	kafkaAddr, pgDSN, chDB string
	stop                   func()
}

// startStack runs the same App the binary runs: embedded broker over TCP,
// a fresh Postgres database and ClickHouse database.
func startStack(t *testing.T, mutate func(*app.Config)) *stack {
	t.Helper()
	chAddr, chDB := stores.TestClickHouse(t)
	pgDSN := stores.TestPostgres(t)
	cfg := app.Config{
		Mode: app.ModeDev, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		KafkaAddr: freeAddr(t), PGDSN: pgDSN, ClickHouseAddr: chAddr, ClickHouseDatabase: chDB,
		Partitions: 3, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("shutdown took over 30s")
			}
		})
	}
	t.Cleanup(stop)
	s := &stack{t: t, app: a, base: "http://" + a.HTTPAddr(), admin: a.AdminToken, stop: stop,
		kafkaAddr: cfg.KafkaAddr, pgDSN: cfg.PGDSN, chDB: cfg.ClickHouseDatabase}
	// Wait for readiness.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + a.MetricsAddr() + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (s *stack) do(method, path, token string, body string, headers ...string) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func (s *stack) token(principal string, tenants ...string) string {
	s.t.Helper()
	tok, err := s.app.TokenIssuer.Issue(auth.IssueRequest{Principal: principal, Tenants: tenants, TTL: time.Hour})
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

func expect(t *testing.T, r response, status int, problemType string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	if problemType != "" {
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("Content-Type %q, want application/problem+json", ct)
		}
		if got, _ := r.body["type"].(string); !strings.HasSuffix(got, "/"+problemType) {
			t.Fatalf("problem type %q, want %s: %s", got, problemType, r.raw)
		}
	}
}

func seqOf(r response) int { f, _ := r.body["seq"].(float64); return int(f) }

func TestCommandAPI(t *testing.T) {
	s := startStack(t, nil)
	create := func(id string) string {
		return fmt.Sprintf(`{"tenant":"pilot-1","type":"entity.create","payload":{"id":%q,"kind":"service","attrs":{"region":"us"}}}`, id)
	}

	r := s.do("POST", "/v1/commands", s.admin, create("svc:A"))
	expect(t, r, 201, "")
	if r.body["decision"] != "allow" || seqOf(r) != 1 || r.body["version"].(float64) != 1 || r.body["consistency"] == "" {
		t.Fatalf("response %s", r.raw)
	}
	receiptID := r.body["receipt_id"].(string)

	t.Run("idempotency", func(t *testing.T) {
		first := s.do("POST", "/v1/commands", s.admin, create("svc:idem"), "Idempotency-Key", "key-1")
		expect(t, first, 201, "")
		again := s.do("POST", "/v1/commands", s.admin, create("svc:idem"), "Idempotency-Key", "key-1")
		expect(t, again, 201, "")
		if again.body["receipt_id"] != first.body["receipt_id"] || seqOf(again) != seqOf(first) || again.header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay %s, first %s", again.raw, first.raw)
		}
		other := s.do("POST", "/v1/commands", s.admin, create("svc:other"), "Idempotency-Key", "key-1")
		expect(t, other, 422, "idempotency-key-reused")
		// Nothing was appended by the replay or the reuse: the next seq follows the first.
		next := s.do("POST", "/v1/commands", s.admin, create("svc:after-idem"))
		expect(t, next, 201, "")
		if seqOf(next) != seqOf(first)+1 {
			t.Fatalf("seq after replays = %d, want %d", seqOf(next), seqOf(first)+1)
		}
		// A different principal using the same key is a different command.
		bad := s.do("POST", "/v1/commands", s.admin, create("svc:idem"), "Idempotency-Key", strings.Repeat("x", 300))
		expect(t, bad, 400, "validation")
	})

	t.Run("policy deny appends a deny receipt", func(t *testing.T) {
		before := s.do("POST", "/v1/commands", s.admin, create("svc:before-deny"))
		bob := s.token("user:bob", "pilot-1")
		d := s.do("POST", "/v1/commands", bob, create("svc:bob"))
		expect(t, d, 403, "policy-denied")
		if seqOf(d) != seqOf(before)+1 || d.body["receipt_id"] == nil || d.body["rationale"] == nil {
			t.Fatalf("deny problem %s", d.raw)
		}
		get := s.do("GET", "/v1/commands/"+d.body["receipt_id"].(string), s.admin, "")
		expect(t, get, 200, "")
		if get.body["decision"] != "deny" || get.body["actor"] != "user:bob" {
			t.Fatalf("outcome %s", get.raw)
		}
	})

	t.Run("authentication", func(t *testing.T) {
		expect(t, s.do("POST", "/v1/commands", "", create("svc:x")), 401, "unauthorized")
		expect(t, s.do("POST", "/v1/commands", "not-a-jwt", create("svc:x")), 401, "unauthorized")
		// Expiry is covered with a fake clock in package auth; here, a token
		// signed by a key the server does not trust.
		other, _ := auth.NewIssuer("companyos", mustKey(t)).Issue(auth.IssueRequest{Principal: "user:admin", Tenants: []string{"*"}, Roles: []string{"admin"}, TTL: time.Hour})
		r := s.do("POST", "/v1/commands", other, create("svc:x"))
		expect(t, r, 401, "unauthorized")
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
		}
	})

	t.Run("bad input", func(t *testing.T) {
		expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":`), 400, "validation")
		r := s.do("POST", "/v1/commands", s.admin, `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"svc:A","kind":"service","colour":"red"}}`)
		expect(t, r, 422, "validation")
		if errs, _ := r.body["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != "payload.colour" {
			t.Fatalf("errors %s", r.raw)
		}
		big := `{"tenant":"pilot-1","type":"entity.create","payload":{"id":"svc:big","kind":"service","attrs":{"a":"` + strings.Repeat("x", 70<<10) + `"}}}`
		expect(t, s.do("POST", "/v1/commands", s.admin, big), 413, "too-large")
		req, _ := http.NewRequest("POST", s.base+"/v1/commands", strings.NewReader(create("svc:x")))
		req.Header.Set("Authorization", "Bearer "+s.admin)
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 415 {
			t.Fatalf("text/plain: %d", resp.StatusCode)
		}
		expect(t, s.do("POST", "/v1/commands", s.admin, create("svc:A")), 409, "already-exists")
		expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":"pilot-1","type":"entity.update","expected_version":9,"payload":{"id":"svc:A","attrs":{"x":1}}}`), 409, "version-conflict")
		expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":"pilot-1","type":"entity.delete","payload":{"id":"svc:none"}}`), 404, "not-found")
		expect(t, s.do("GET", "/v1/nope", s.admin, ""), 404, "not-found")
	})

	t.Run("tenant isolation", func(t *testing.T) {
		carol := s.token("user:carol", "other-tenant")
		expect(t, s.do("POST", "/v1/commands", carol, create("svc:c")), 403, "tenant-forbidden")
		// A receipt of pilot-1 is invisible (404, not 403) to another tenant's token.
		expect(t, s.do("GET", "/v1/commands/"+receiptID, carol, ""), 404, "not-found")
		expect(t, s.do("GET", "/v1/commands/rcpt_00000000000000000000000000000000", s.admin, ""), 404, "not-found")
		expect(t, s.do("GET", "/v1/commands/bogus", s.admin, ""), 400, "validation")
	})

	t.Run("outcome and keys", func(t *testing.T) {
		get := s.do("GET", "/v1/commands/"+receiptID, s.admin, "")
		expect(t, get, 200, "")
		keys := s.do("GET", "/v1/keys", "", "")
		expect(t, keys, 200, "")
		var ks keyfile.KeySet
		if err := json.Unmarshal(keys.raw, &ks); err != nil || len(ks.Keys) != 1 || ks.Keys[0].KeyID != s.app.SigningKeyID {
			t.Fatalf("keys %s", keys.raw)
		}
		envRaw, _ := json.Marshal(get.body["envelope"])
		env, err := events.ParseEnvelope(envRaw)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Verify(ks); err != nil {
			t.Fatalf("receipt from GET does not verify: %v", err)
		}
		rc, _ := events.ParseReceipt(env.Payload)
		if rc.ID != receiptID || rc.Seq != 1 || rc.PrevHash != events.GenesisHash || rc.Tenant != "pilot-1" {
			t.Fatalf("receipt %+v", rc)
		}
	})

	t.Run("batch", func(t *testing.T) {
		body := `{"commands":[` + create("svc:b1") + `,` + create("svc:b2") +
			`,{"tenant":"pilot-1","type":"relation.link","payload":{"from":"svc:b1","rel":"calls","to":"svc:b2"}},` + create("svc:A") + `]}`
		r := s.do("POST", "/v1/commands/batch", s.admin, body, "Idempotency-Key", "batch-1")
		expect(t, r, 200, "")
		res := r.body["results"].([]any)
		codes := []int{}
		for _, it := range res {
			codes = append(codes, int(it.(map[string]any)["status"].(float64)))
		}
		if fmt.Sprint(codes) != "[201 201 201 409]" || r.body["allowed"].(float64) != 3 || r.body["failed"].(float64) != 1 {
			t.Fatalf("batch result %s", r.raw)
		}
		// Retried batch replays: same receipts, nothing appended.
		again := s.do("POST", "/v1/commands/batch", s.admin, body, "Idempotency-Key", "batch-1")
		expect(t, again, 200, "")
		if again.body["results"].([]any)[2].(map[string]any)["receipt_id"] != res[2].(map[string]any)["receipt_id"] {
			t.Fatalf("replay %s", again.raw)
		}
		// One invalid item rejects the whole batch, naming it; nothing is appended.
		before := s.do("POST", "/v1/commands", s.admin, create("svc:before-bad-batch"))
		bad := s.do("POST", "/v1/commands/batch", s.admin, `{"commands":[`+create("svc:b3")+`,{"tenant":"pilot-1","type":"entity.create","payload":{"id":"nocolon","kind":"service"}}]}`)
		expect(t, bad, 422, "validation")
		if errs := bad.body["errors"].([]any); errs[0].(map[string]any)["field"] != "commands[1].payload.id" {
			t.Fatalf("errors %s", bad.raw)
		}
		after := s.do("POST", "/v1/commands", s.admin, create("svc:after-bad-batch"))
		if seqOf(after) != seqOf(before)+1 {
			t.Fatalf("a rejected batch appended receipts: seq %d after %d", seqOf(after), seqOf(before))
		}
		expect(t, s.do("POST", "/v1/commands/batch", s.admin, `{"commands":[]}`), 422, "validation")
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + s.app.MetricsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, want := range []string{
			`http_total{code="2xx",route="/v1/commands"}`, `http_5xx_total{route="/v1/commands"}`,
			`provenance_receipts_total{decision="allow"}`, `provenance_receipts_total{decision="deny"} 1`,
			`command_duration_seconds_bucket`, `processor_lag_records`,
		} {
			if !bytes.Contains(body, []byte(want)) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

func mustKey(t *testing.T) []byte {
	t.Helper()
	k, _, err := keyfile.LoadOrCreate(t.TempDir() + "/k.pem")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRateLimit(t *testing.T) {
	s := startStack(t, func(c *app.Config) { c.RatePerTenant = 1; c.Burst = 2 })
	var mu sync.Mutex
	codes := map[int]int{}
	var retryAfter string
	for i := 0; i < 6; i++ {
		r := s.do("POST", "/v1/commands", s.admin, fmt.Sprintf(`{"tenant":"rl","type":"entity.create","payload":{"id":"svc:%d","kind":"service"}}`, i))
		mu.Lock()
		codes[r.status]++
		if r.status == 429 {
			retryAfter = r.header.Get("Retry-After")
		}
		mu.Unlock()
	}
	if codes[201] < 2 || codes[429] == 0 || retryAfter == "" {
		t.Fatalf("codes %v, Retry-After %q", codes, retryAfter)
	}
	// Another tenant has its own bucket.
	expect(t, s.do("POST", "/v1/commands", s.admin, `{"tenant":"rl-2","type":"entity.create","payload":{"id":"svc:x","kind":"service"}}`), 201, "")
}
