package graphload

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func durationUS(us int) time.Duration { return time.Duration(us) * time.Microsecond }

// fakeGraphAPI answers POST /v1/graph/query like the server's contract
// (200 JSON, problem+json for errors) and serves a graph_query_ms histogram
// on /metrics that counts the queries it answered.
type fakeGraphAPI struct {
	delay  time.Duration
	mu     sync.Mutex
	byOp   map[string]int
	bodies []queryBody
	bad    atomic.Int32
}

func (f *fakeGraphAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/metrics":
		f.mu.Lock()
		defer f.mu.Unlock()
		var b strings.Builder
		b.WriteString("# TYPE graph_query_ms histogram\n")
		for _, op := range []string{"rel", "neighbors", "path", "who_can"} {
			n := f.byOp[op]
			// Every query "took" between 1 and 2 ms.
			fmt.Fprintf(&b, "graph_query_ms_bucket{op=%q,le=\"1\"} 0\n", op)
			fmt.Fprintf(&b, "graph_query_ms_bucket{op=%q,le=\"2\"} %d\n", op, n)
			fmt.Fprintf(&b, "graph_query_ms_bucket{op=%q,le=\"+Inf\"} %d\n", op, n)
			fmt.Fprintf(&b, "graph_query_ms_sum{op=%q} %d\n", op, 3*n/2)
			fmt.Fprintf(&b, "graph_query_ms_count{op=%q} %d\n", op, n)
		}
		b.WriteString("process_cpu_seconds_total 1\n")
		_, _ = w.Write([]byte(b.String()))
		return
	case r.Method != http.MethodPost || r.URL.Path != "/v1/graph/query":
		http.NotFound(w, r)
		return
	}
	var body queryBody
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || r.Header.Get("Authorization") != "Bearer tok" || body.Tenant != "pilot-1" {
		f.bad.Add(1)
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	time.Sleep(f.delay)
	op, _, _ := strings.Cut(body.Query, "(")
	f.mu.Lock()
	f.byOp[op]++
	f.bodies = append(f.bodies, body)
	f.mu.Unlock()
	if op == "who_can" {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnprocessableEntity)
		_, _ = w.Write([]byte(`{"type":"https://companyos.dev/problems/limit-exceeded","title":"Unprocessable Entity","status":422,"detail":"graph: query exceeded the time limit of 2000ms"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"nodes":[],"edges":[],"paths":[],"principals":[],"next_cursor":null}`))
}

func testQueries(t *testing.T) []Query {
	t.Helper()
	qs, err := ParseQueries(strings.NewReader(`
rel(3hop, $rand_service -> 'db:*')
neighbors($rand_user, depth=2)
path($rand_user, $rand_dataset)
who_can('entity.update', $rand_dataset)
`))
	if err != nil {
		t.Fatal(err)
	}
	return qs
}

func TestRunCounts(t *testing.T) {
	t.Parallel()
	api := &fakeGraphAPI{delay: 2 * time.Millisecond, byOp: map[string]int{}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ids, _ := FixtureIDSpace(50000)
	var progress atomic.Int32
	sum, err := Run(context.Background(), Config{
		URL: srv.URL, MetricsURL: srv.URL + "/metrics", Token: "tok", Tenant: "pilot-1",
		QPS: 50, Duration: time.Second, Queries: testQueries(t), IDs: ids, Seed: 7, Limit: 100,
		Progress: func(Progress) { progress.Add(1) }, ProgressEvery: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if api.bad.Load() != 0 {
		t.Fatalf("%d malformed requests", api.bad.Load())
	}
	if sum.Scheduled != 50 || sum.Sent != 50 || sum.NotSent != 0 {
		t.Fatalf("scheduled %d, sent %d, not sent %d; want 50, 50, 0", sum.Scheduled, sum.Sent, sum.NotSent)
	}
	api.mu.Lock()
	whoCan := api.byOp["who_can"]
	bodies := api.bodies
	api.mu.Unlock()
	if sum.OK != 50-whoCan || sum.Errors != whoCan || sum.Status["200"] != sum.OK || sum.Status["422"] != whoCan {
		t.Errorf("ok %d, errors %d, status %v; server answered %d who_can with 422", sum.OK, sum.Errors, sum.Status, whoCan)
	}
	if whoCan == 0 || whoCan == 50 {
		t.Errorf("who_can picked %d of 50 times; want a mix", whoCan)
	}
	if want := float64(whoCan) / 50; sum.ErrorRate != want {
		t.Errorf("error rate %v, want %v", sum.ErrorRate, want)
	}
	total := 0
	for form, f := range sum.Forms {
		total += f.OK + f.Errors
		if int(f.LatencyMS.Count) != f.OK+f.Errors {
			t.Errorf("%s: %d latencies for %d requests", form, f.LatencyMS.Count, f.OK+f.Errors)
		}
		if api.byOp[form] != f.OK+f.Errors {
			t.Errorf("%s: client counted %d, server %d", form, f.OK+f.Errors, api.byOp[form])
		}
	}
	if total != 50 || sum.LatencyMS.Count != 50 {
		t.Errorf("forms add up to %d, latencies %d; want 50", total, sum.LatencyMS.Count)
	}
	if sum.LatencyMS.P50 < 2 || sum.ServiceMS.P50 < 2 {
		t.Errorf("p50 %.2fms (service %.2fms) is below the server's 2ms delay", sum.LatencyMS.P50, sum.ServiceMS.P50)
	}
	// Generous upper bounds: a busy CI machine may delay the last responses.
	if sum.ElapsedS < 0.98 || sum.ElapsedS > 2.5 || sum.AchievedQPS < 20 || sum.AchievedQPS > 52 {
		t.Errorf("elapsed %.2fs, achieved %.1f qps; want about 1s and 50 qps", sum.ElapsedS, sum.AchievedQPS)
	}
	if !strings.Contains(strings.Join(sum.FirstErrors, "\n"), "422 who_can: https://companyos.dev/problems/limit-exceeded: graph: query exceeded the time limit") {
		t.Errorf("first errors = %q", sum.FirstErrors)
	}
	if sum.Server.Error != "" {
		t.Fatalf("server: %s", sum.Server.Error)
	}
	for op, n := range api.byOp {
		o := sum.Server.Ops[op]
		if o.Count != float64(n) || o.P50MS < 1 || o.P50MS > 2 || o.P99MS < o.P50MS {
			t.Errorf("server %s = %+v, want count %d and quantiles in (1,2]", op, o, n)
		}
	}
	if progress.Load() < 2 {
		t.Errorf("progress reported %d times in 1s at 200ms", progress.Load())
	}
	// Placeholders were bound per request, and only those used.
	seen := map[string]bool{}
	for _, b := range bodies {
		if b.Limit != 100 {
			t.Fatalf("limit %d, want 100", b.Limit)
		}
		for name, v := range b.Vars {
			if !strings.Contains(b.Query, "$"+name) {
				t.Errorf("query %q bound unused %s", b.Query, name)
			}
			seen[fmt.Sprint(v)] = true
		}
	}
	if len(seen) < 30 {
		t.Errorf("only %d distinct ids in 50 requests", len(seen))
	}
	var text strings.Builder
	if err := sum.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"status: 200=", "who_can", "server graph_query_ms"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, text.String())
		}
	}
}

// TestRunCountsFromSchedule: with one slot and a server slower than the
// arrival interval, requests queue in the client; their latency must count
// from the scheduled send, not from when a slot freed up.
func TestRunCountsFromSchedule(t *testing.T) {
	t.Parallel()
	api := &fakeGraphAPI{delay: 40 * time.Millisecond, byOp: map[string]int{}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ids, _ := FixtureIDSpace(50000)
	sum, err := Run(context.Background(), Config{
		URL: srv.URL, Token: "tok", Tenant: "pilot-1", QPS: 50, Duration: 400 * time.Millisecond,
		Concurrency: 1, Queries: testQueries(t)[:1], IDs: ids,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != 20 || sum.OK != 20 {
		t.Fatalf("sent %d, ok %d; want 20, 20", sum.Sent, sum.OK)
	}
	// 20 requests × 40ms serially: the last, scheduled at 380ms, is sent
	// at about 760ms and answered at about 800ms.
	if sum.LatencyMS.Max < 350 || sum.SendLagMS.Max < 300 {
		t.Errorf("max latency %.0fms, max send lag %.0fms; want them to include the queueing (≥ 350, ≥ 300)", sum.LatencyMS.Max, sum.SendLagMS.Max)
	}
	if sum.ServiceMS.P50 > 150 {
		t.Errorf("service time p50 %.0fms, want about 40ms", sum.ServiceMS.P50)
	}
	if sum.Server.Ops != nil || sum.Server.Error != "" {
		t.Errorf("no metrics URL, but server = %+v", sum.Server)
	}
}

func TestRunMaxRequests(t *testing.T) {
	t.Parallel()
	api := &fakeGraphAPI{byOp: map[string]int{}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ids, _ := FixtureIDSpace(1000)
	sum, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", Tenant: "pilot-1", QPS: 200,
		Duration: time.Hour, MaxRequests: 10, Queries: testQueries(t)[:2], IDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != 10 || sum.OK != 10 || sum.ElapsedS > 1 {
		t.Errorf("sent %d, ok %d in %.2fs; want 10 and 10 within the cap, not the hour", sum.Sent, sum.OK, sum.ElapsedS)
	}
}

func TestRunCanceled(t *testing.T) {
	t.Parallel()
	api := &fakeGraphAPI{byOp: map[string]int{}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ids, _ := FixtureIDSpace(1000)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	sum, err := Run(ctx, Config{URL: srv.URL, Token: "tok", Tenant: "pilot-1", QPS: 100,
		Duration: time.Hour, Queries: testQueries(t)[:2], IDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent < 20 || sum.Sent > 40 || sum.Sent != sum.Scheduled || sum.OK != sum.Sent {
		t.Errorf("canceled after 300ms at 100 qps: scheduled %d, sent %d, ok %d", sum.Scheduled, sum.Sent, sum.OK)
	}
}

func TestConfigRefusesNonLoopback(t *testing.T) {
	base := Config{Token: "t", Tenant: "pilot-1", QPS: 1, Duration: time.Second, Queries: []Query{{Text: "neighbors('a')", Form: "neighbors"}}}
	for _, u := range []string{"http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://127.1.2.3"} {
		c := base
		c.URL = u
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	for _, u := range []string{"http://10.0.0.1:8080", "http://example.com", "http://0.0.0.0:8080", "ftp://127.0.0.1", "http://127.0.0.1.nip.io"} {
		c := base
		c.URL = u
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "url") {
			t.Errorf("%s: accepted (err %v)", u, err)
		}
		c.URL, c.MetricsURL = "http://127.0.0.1:8080", u
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "metrics url") {
			t.Errorf("metrics %s: accepted (err %v)", u, err)
		}
	}
	if err := (Config{}).Validate(); err == nil || strings.Count(err.Error(), "\n") < 5 {
		t.Errorf("empty config: want every problem reported, got %v", err)
	}
}
