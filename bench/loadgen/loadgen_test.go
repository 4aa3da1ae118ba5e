package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 257, 511, 512, 1000, 12345, 1 << 20, 1<<40 - 1} {
		i := bucketOf(v)
		if hi := bucketHigh(i); hi < v {
			t.Errorf("bucketHigh(bucketOf(%d)) = %d, below the value", v, hi)
		}
		if i > 0 && bucketHigh(i-1) >= v {
			t.Errorf("value %d also fits the previous bucket (high %d)", v, bucketHigh(i-1))
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		v := r.Uint64N(1 << 36)
		hi := bucketHigh(bucketOf(v))
		if hi < v || float64(hi-v) > float64(v)/128+1 {
			t.Fatalf("value %d: bucket high %d, want within 1/128", v, hi)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{.5, .9, .99, .999} {
		want := q * 100000
		got := float64(h.Quantile(q).Microseconds())
		if got < want || got > want*1.01 {
			t.Errorf("q%v = %vµs, want %v..+1%%", q, got, want)
		}
	}
	if h.Max() != 100*time.Millisecond || h.Quantile(1) != h.Max() {
		t.Errorf("max = %v, q1 = %v, want 100ms", h.Max(), h.Quantile(1))
	}
	if h.Count() != 100000 {
		t.Errorf("count = %d", h.Count())
	}
	var empty Histogram
	if empty.Quantile(.99) != 0 || empty.Mean() != 0 {
		t.Error("empty histogram should report zeros")
	}
}

func TestCheckLoopbackURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8080", "http://localhost:1", "https://[::1]:443/", "http://127.1.2.3"} {
		if _, err := CheckLoopbackURL(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	for _, u := range []string{"http://10.0.0.1:8080", "http://example.com", "http://0.0.0.0:8080", "ftp://127.0.0.1", "http://", "http://localhost.example.com", "::"} {
		if _, err := CheckLoopbackURL(u); err == nil {
			t.Errorf("%s: accepted, want refused", u)
		}
	}
	_, err := CheckLoopbackURL("http://192.168.1.1")
	if !errors.Is(err, ErrNotLoopback) {
		t.Errorf("err = %v, want ErrNotLoopback", err)
	}
	cfg := Config{URL: "http://8.8.8.8", Token: "t"}
	cfg.Defaults()
	if err := cfg.Validate(); !errors.Is(err, ErrNotLoopback) {
		t.Errorf("Validate = %v, want ErrNotLoopback", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := Config{URL: "http://127.0.0.1:1", Token: "t"}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := cfg
	bad.Mix, bad.RunID, bad.Tenants, bad.Rate, bad.Duration = "nope", "a*b", 0, -1, -time.Second
	err := bad.Validate()
	for _, want := range []string{"mix", "run id", "tenants", "rate", "duration"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to mention %s", err, want)
		}
	}
}

// fakeAPI answers like the command API: 201 for a valid command, 404 for an
// update or link of an unknown entity, 409 for a duplicate create or link.
type fakeAPI struct {
	mu       sync.Mutex
	entities map[string]bool
	links    map[string]bool
	delay    time.Duration
	serial   sync.Mutex // held across delay when serialize is set
	serialOn bool
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/commands" ||
		r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request shape", http.StatusBadRequest)
		return
	}
	if f.serialOn {
		f.serial.Lock()
		defer f.serial.Unlock()
	}
	time.Sleep(f.delay)
	var cmd struct {
		Tenant  string `json:"tenant"`
		Type    string `json:"type"`
		Payload struct {
			ID   string `json:"id"`
			From string `json:"from"`
			To   string `json:"to"`
			Rel  string `json:"rel"`
		} `json:"payload"`
	}
	if err := json.NewDecoder(r.Body).Decode(&cmd); err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := func(id string) string { return cmd.Tenant + "/" + id }
	status := http.StatusCreated
	switch cmd.Type {
	case typeCreate:
		if f.entities[key(cmd.Payload.ID)] {
			status = http.StatusConflict
		}
		f.entities[key(cmd.Payload.ID)] = true
	case typeUpdate:
		if !f.entities[key(cmd.Payload.ID)] {
			status = http.StatusNotFound
		}
	case typeLink:
		l := key(cmd.Payload.From + " " + cmd.Payload.Rel + " " + cmd.Payload.To)
		switch {
		case !f.entities[key(cmd.Payload.From)] || !f.entities[key(cmd.Payload.To)]:
			status = http.StatusNotFound
		case f.links[l]:
			status = http.StatusConflict
		}
		f.links[l] = true
	default:
		status = http.StatusUnprocessableEntity
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(`{"receipt_id":"rcpt_x"}`))
}

func newFake(t *testing.T) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{entities: map[string]bool{}, links: map[string]bool{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func TestRunClosedLoopMixed(t *testing.T) {
	_, srv := newFake(t)
	res, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", Mix: MixMixed, Tenants: 3,
		Concurrency: 8, Duration: 400 * time.Millisecond, Warmup: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent == 0 || res.OK != res.Sent || res.Errors != 0 {
		t.Fatalf("sent %d ok %d errors %d statuses %v samples %v", res.Sent, res.OK, res.Errors, res.Statuses, res.ErrorSamples)
	}
	for _, typ := range []string{typeCreate, typeUpdate, typeLink} {
		if res.ByType[typ].OK == 0 {
			t.Errorf("no successful %s: %+v", typ, res.ByType)
		}
	}
	if res.Mode != "closed-loop" || res.Throughput <= 0 || res.MaxInFlight > 8 {
		t.Errorf("result %+v", res)
	}
}

func TestRunOpenLoopRate(t *testing.T) {
	_, srv := newFake(t)
	res, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", Rate: 500,
		Duration: time.Second, Warmup: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// 500/s for 1s: the schedule is exact, so allow only rounding.
	if res.Sent < 495 || res.Sent > 505 {
		t.Errorf("sent %d in 1s at 500/s", res.Sent)
	}
	if res.Errors != 0 || res.Statuses["201"] != res.Sent {
		t.Errorf("statuses %v", res.Statuses)
	}
}

// A server that can do only 20 requests/s, offered 40/s: in open loop the
// backlog must show up as growing latency (no coordinated omission).
func TestRunOpenLoopCountsQueueing(t *testing.T) {
	f, srv := newFake(t)
	f.delay, f.serialOn = 50*time.Millisecond, true
	res, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", Rate: 40, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The last of the ~40 requests waits for ~20 before it: ≥ 0.5s.
	if res.Latency.Max < 500 {
		t.Errorf("max latency %.1fms, want the queueing (≥ 500ms) counted", res.Latency.Max)
	}
	if res.Latency.P50 < 100 {
		t.Errorf("p50 %.1fms, want well above the 50ms service time", res.Latency.P50)
	}
}

func TestRunMaxRequestsAndErrors(t *testing.T) {
	_, srv := newFake(t)
	res, err := Run(context.Background(), Config{URL: srv.URL, Token: "wrong", Concurrency: 4,
		Duration: 5 * time.Second, MaxRequests: 50})
	if err != nil {
		t.Fatal(err)
	}
	if !res.HitMaxReqs || res.Sent != 50 || res.Window >= 5 {
		t.Errorf("hit %v sent %d window %.2fs", res.HitMaxReqs, res.Sent, res.Window)
	}
	if res.Statuses["400"] != 50 || res.ErrorRate != 1 || !strings.Contains(res.ErrorSamples["400"], "bad request shape") {
		t.Errorf("statuses %v rate %v samples %v", res.Statuses, res.ErrorRate, res.ErrorSamples)
	}
}

func TestRunInterrupted(t *testing.T) {
	_, srv := newFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, Config{URL: srv.URL, Token: "tok", Rate: 100, Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second || !res.Interrupted || res.Window > 1 {
		t.Errorf("took %v, interrupted %v, window %.2fs", time.Since(start), res.Interrupted, res.Window)
	}
}

func TestRunRefusesRedirectElsewhere(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.com/v1/commands", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(srv.Close)
	res, err := Run(context.Background(), Config{URL: srv.URL, Token: "tok", Concurrency: 1, MaxRequests: 3, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Statuses["307"] != 3 {
		t.Errorf("statuses %v: redirects must not be followed", res.Statuses)
	}
}
