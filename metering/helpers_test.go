package metering_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/metering"
)

const testIssuer = "companyos-test"

// kafka is an embedded broker over TCP with the CompanyOS topics.
type kafka struct {
	broker  *events.Broker
	brokers []string
}

func startKafka(t *testing.T) *kafka {
	t.Helper()
	b, err := events.StartBroker(events.BrokerConfig{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	k := &kafka{broker: b, brokers: b.Addrs()}
	t.Cleanup(b.Close)
	cl := k.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := events.EnsureTopics(ctx, cl, events.TopicsConfig{Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *kafka) client(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.brokers...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// records reads every committed record of topic.
func (k *kafka) records(t *testing.T, topic string) []*kgo.Record {
	t.Helper()
	cl := k.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []*kgo.Record
	if err := events.ReadToStable(ctx, cl, topic, nil, func(r *kgo.Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// tokens issues and verifies bearer tokens with a fresh key.
type tokens struct {
	issuer   *auth.Issuer
	verifier *auth.Verifier
}

func newTokens(t *testing.T) *tokens {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss := auth.NewIssuer(testIssuer, key)
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: iss.KeySet(), Issuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	return &tokens{issuer: iss, verifier: v}
}

func (tk *tokens) issue(t *testing.T, tenants []string, roles ...string) string {
	t.Helper()
	tok, err := tk.issuer.Issue(auth.IssueRequest{Principal: "svc:meter-agent", Tenants: tenants, Roles: roles, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// stack is the ingest API over HTTP in front of the embedded broker.
type stack struct {
	kafka  *kafka
	tokens *tokens
	reg    *prometheus.Registry
	srv    *httptest.Server
	token  string // metering.write for acme and globex
}

func startStack(t *testing.T, edit func(*metering.Config)) *stack {
	t.Helper()
	k := startKafka(t)
	tk := newTokens(t)
	producer := k.client(t, kgo.ProducerLinger(0), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	reg := prometheus.NewRegistry()
	cfg := metering.Config{Producer: producer, Tokens: tk.verifier, Metrics: httpx.NewMetrics(reg), Registerer: reg, Timeout: 5 * time.Second}
	if edit != nil {
		edit(&cfg)
	}
	api, err := metering.NewAPI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &stack{kafka: k, tokens: tk, reg: reg, srv: srv, token: tk.issue(t, []string{"acme", "globex"}, metering.PermissionWrite)}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (s *stack) post(t *testing.T, token, contentType string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.srv.URL+"/v1/metering/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// counter returns metering_events_total{result}.
func (s *stack) counter(t *testing.T, result string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "metering_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// ev builds a valid event as a JSON object; edit changes its fields.
func ev(id string, edit func(map[string]any)) map[string]any {
	e := map[string]any{
		"specversion": "1.0",
		"id":          id,
		"source":      "//agents/host-1",
		"type":        "compute.cpu_seconds",
		"subject":     "acme",
		"time":        "2026-01-02T15:04:05Z",
		"data":        map[string]any{"quantity": json.Number("12.50"), "unit": "second", "tags": map[string]any{"service": "api"}},
	}
	if edit != nil {
		edit(e)
	}
	return e
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
