package metering_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/metering"
)

type problem struct {
	Type     string                  `json:"type"`
	Status   int                     `json:"status"`
	Detail   string                  `json:"detail"`
	Errors   []httpx.FieldError      `json:"errors"`
	Rejected []metering.RejectedItem `json:"rejected"`
}

func headers(r *kgo.Record) map[string]string {
	h := map[string]string{}
	for _, x := range r.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

func TestIngestSingleEvent(t *testing.T) {
	s := startStack(t, nil)
	for _, ct := range []string{metering.MediaTypeEvent, "application/json", "application/cloudevents+json; charset=utf-8", ""} {
		id := "single-" + strings.NewReplacer("/", "-", " ", "", ";", "", "=", "").Replace(ct)
		resp := s.post(t, s.token, ct, mustJSON(t, ev(id, nil)))
		if resp.status != http.StatusAccepted {
			t.Fatalf("%q: status %d: %s", ct, resp.status, resp.body)
		}
		var got metering.IngestResponse
		resp.json(t, &got)
		if len(got.Accepted) != 1 || got.Accepted[0].ID != id || got.Accepted[0].Index != 0 || got.Accepted[0].Duplicate || len(got.Rejected) != 0 {
			t.Fatalf("%q: response %s", ct, resp.body)
		}
	}
	recs := s.kafka.records(t, events.TopicMetering)
	if len(recs) != 4 {
		t.Fatalf("%d records on %s, want 4", len(recs), events.TopicMetering)
	}
	r := recs[0]
	if string(r.Key) != "acme" {
		t.Fatalf("key %q, want the tenant", r.Key)
	}
	h := headers(r)
	var e metering.Event
	if err := json.Unmarshal(r.Value, &e); err != nil {
		t.Fatal(err)
	}
	if h[metering.HeaderCEID] != e.ID || h[metering.HeaderCESource] != "//agents/host-1" || h[metering.HeaderCEType] != "compute.cpu_seconds" {
		t.Fatalf("headers %v", h)
	}
	if e.Data.Quantity != "12.5" || e.Subject != "acme" || e.Data.Tags["service"] != "api" || e.SpecVersion != "1.0" {
		t.Fatalf("stored event %s", r.Value)
	}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	// The stored value is exactly the Event's JSON: quantity a string.
	if !strings.Contains(string(r.Value), `"quantity":"12.5"`) {
		t.Fatalf("value %s", r.Value)
	}
	if got := s.counter(t, "accepted"); got != 4 {
		t.Fatalf("metering_events_total{result=accepted} = %v, want 4", got)
	}
}

func TestIngestBatchKeyedByTenant(t *testing.T) {
	s := startStack(t, nil)
	var batch []map[string]any
	for i := range 50 {
		tenant := []string{"acme", "globex"}[i%2]
		batch = append(batch, ev(fmt.Sprintf("b-%d", i), func(e map[string]any) {
			e["subject"] = tenant
			e["data"].(map[string]any)["quantity"] = json.Number(fmt.Sprintf("%d.250e-1", i))
		}))
	}
	resp := s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, batch))
	if resp.status != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.status, resp.body)
	}
	var got metering.IngestResponse
	resp.json(t, &got)
	if len(got.Accepted) != 50 || len(got.Rejected) != 0 {
		t.Fatalf("response %s", resp.body)
	}
	recs := s.kafka.records(t, events.TopicMetering)
	if len(recs) != 50 {
		t.Fatalf("%d records, want 50", len(recs))
	}
	partOf := map[string]int32{}
	seen := map[string]bool{}
	for _, r := range recs {
		var e metering.Event
		if err := json.Unmarshal(r.Value, &e); err != nil {
			t.Fatal(err)
		}
		if string(r.Key) != e.Subject {
			t.Fatalf("record key %q, event subject %q", r.Key, e.Subject)
		}
		if p, ok := partOf[e.Subject]; ok && p != r.Partition {
			t.Fatalf("tenant %s on partitions %d and %d", e.Subject, p, r.Partition)
		}
		partOf[e.Subject] = r.Partition
		var i int
		fmt.Sscanf(e.ID, "b-%d", &i)
		want, _ := metering.NormalizeDecimal(fmt.Sprintf("%d.%03d", i/10, (i%10)*100+25))
		if e.Data.Quantity != want {
			t.Fatalf("%s: quantity %s, want %s", e.ID, e.Data.Quantity, want)
		}
		seen[e.ID] = true
	}
	if len(seen) != 50 {
		t.Fatalf("%d distinct ids", len(seen))
	}
	// application/json with an array body is a batch too.
	resp = s.post(t, s.token, "application/json", mustJSON(t, []any{ev("json-array", nil)}))
	if resp.status != http.StatusAccepted {
		t.Fatalf("application/json array: %d %s", resp.status, resp.body)
	}
}

func TestIngestPartialBatch(t *testing.T) {
	s := startStack(t, nil)
	batch := []any{
		ev("ok-0", nil),
		ev("bad-1", func(e map[string]any) { e["data"].(map[string]any)["quantity"] = json.Number("-3") }),
		ev("ok-2", nil),
		ev("other-tenant-3", func(e map[string]any) { e["subject"] = "initech" }),
		"not an event",
		ev("bad-5", func(e map[string]any) { delete(e, "time"); e["type"] = "cpu" }),
	}
	resp := s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, batch))
	if resp.status != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.status, resp.body)
	}
	var got metering.IngestResponse
	resp.json(t, &got)
	if len(got.Accepted) != 2 || got.Accepted[0].Index != 0 || got.Accepted[1].Index != 2 {
		t.Fatalf("accepted %+v", got.Accepted)
	}
	want := map[int]struct {
		id     string
		status int
		fields []string
	}{
		1: {"bad-1", 422, []string{"data.quantity"}},
		3: {"other-tenant-3", 403, []string{"subject"}},
		4: {"", 400, []string{"body"}},
		5: {"bad-5", 422, []string{"time", "type"}},
	}
	if len(got.Rejected) != len(want) {
		t.Fatalf("rejected %+v", got.Rejected)
	}
	for _, rj := range got.Rejected {
		w := want[rj.Index]
		var fields []string
		for _, fe := range rj.Errors {
			fields = append(fields, fe.Field)
		}
		if rj.ID != w.id || rj.Status != w.status || fmt.Sprint(fields) != fmt.Sprint(w.fields) || rj.Type == "" || rj.Detail == "" {
			t.Errorf("rejected[%d] = %+v, want id %q status %d fields %v", rj.Index, rj, w.id, w.status, w.fields)
		}
	}
	if n := len(s.kafka.records(t, events.TopicMetering)); n != 2 {
		t.Fatalf("%d records, want the 2 valid ones", n)
	}
	if a, r := s.counter(t, "accepted"), s.counter(t, "rejected"); a != 2 || r != 4 {
		t.Fatalf("accepted %v rejected %v", a, r)
	}
}

func TestIngestSingleInvalid(t *testing.T) {
	s := startStack(t, nil)
	resp := s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("x", func(e map[string]any) {
		e["data"].(map[string]any)["quantity"] = "1e3"
	})))
	var p problem
	resp.json(t, &p)
	if resp.status != http.StatusUnprocessableEntity || resp.header.Get("Content-Type") != "application/problem+json" ||
		len(p.Errors) != 1 || p.Errors[0].Field != "data.quantity" || !strings.Contains(p.Detail, "data.quantity") {
		t.Fatalf("%d %s", resp.status, resp.body)
	}
	for _, tc := range []struct {
		name, ct string
		body     string
		status   int
	}{
		{"malformed", metering.MediaTypeEvent, `{"id":`, 400},
		{"array as single", metering.MediaTypeEvent, `[]`, 400},
		{"object as batch", metering.MediaTypeBatch, `{}`, 400},
		{"empty batch", metering.MediaTypeBatch, `[]`, 422},
		{"malformed batch", metering.MediaTypeBatch, `[{"id":1},`, 400},
		{"text/plain", "text/plain", `{}`, 415},
		{"binary mode", "application/octet-stream", `{}`, 415},
	} {
		resp := s.post(t, s.token, tc.ct, []byte(tc.body))
		if resp.status != tc.status || resp.header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.status, resp.body, tc.status)
		}
	}
	// A batch where nothing is valid: 422 with every item's errors.
	resp = s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, []any{
		ev("a", func(e map[string]any) { e["specversion"] = "0.3" }),
		ev("b", func(e map[string]any) { e["subject"] = "initech" }),
	}))
	resp.json(t, &p)
	if resp.status != http.StatusUnprocessableEntity || len(p.Rejected) != 2 || len(p.Errors) != 2 ||
		p.Errors[0].Field != "[0].specversion" || p.Errors[1].Field != "[1].subject" {
		t.Fatalf("%d %s", resp.status, resp.body)
	}
	if n := len(s.kafka.records(t, events.TopicMetering)); n != 0 {
		t.Fatalf("%d records produced", n)
	}
}

func TestIngestIdempotent(t *testing.T) {
	s := startStack(t, nil)
	one := mustJSON(t, ev("dup-1", nil))
	for range 3 {
		if resp := s.post(t, s.token, metering.MediaTypeEvent, one); resp.status != http.StatusAccepted {
			t.Fatalf("%d %s", resp.status, resp.body)
		}
	}
	// The last answer says it was a duplicate.
	var got metering.IngestResponse
	s.post(t, s.token, metering.MediaTypeEvent, one).json(t, &got)
	if !got.Accepted[0].Duplicate {
		t.Fatalf("retry not flagged duplicate: %+v", got)
	}

	batch := mustJSON(t, []any{ev("dup-2", nil), ev("dup-3", nil), ev("dup-2", func(e map[string]any) {
		e["data"].(map[string]any)["quantity"] = 99 // same (source, id): the first one wins
	}), ev("dup-1", nil)})
	for i := range 2 {
		resp := s.post(t, s.token, metering.MediaTypeBatch, batch)
		if resp.status != http.StatusAccepted {
			t.Fatalf("%d %s", resp.status, resp.body)
		}
		var got metering.IngestResponse
		resp.json(t, &got)
		wantDup := []bool{i == 1, i == 1, true, true}
		for k, a := range got.Accepted {
			if a.Duplicate != wantDup[k] {
				t.Fatalf("round %d: accepted %+v", i, got.Accepted)
			}
		}
	}
	// Same id from another source is another event; same (source, id) for
	// another tenant is that tenant's own event.
	s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("dup-1", func(e map[string]any) { e["source"] = "//agents/host-2" })))
	s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("dup-1", func(e map[string]any) { e["subject"] = "globex" })))

	recs := s.kafka.records(t, events.TopicMetering)
	count := map[string]int{}
	for _, r := range recs {
		var e metering.Event
		_ = json.Unmarshal(r.Value, &e)
		count[e.Subject+"|"+e.Source+"|"+e.ID]++
		if e.ID == "dup-2" && e.Data.Quantity != "12.5" {
			t.Fatalf("the later duplicate won: %s", r.Value)
		}
	}
	want := map[string]int{"acme|//agents/host-1|dup-1": 1, "acme|//agents/host-1|dup-2": 1, "acme|//agents/host-1|dup-3": 1,
		"acme|//agents/host-2|dup-1": 1, "globex|//agents/host-1|dup-1": 1}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Fatalf("records %v, want %v", count, want)
	}
	if d := s.counter(t, "duplicate"); d != 3+2+4 {
		t.Fatalf("duplicates counted %v, want 9", d)
	}
}

func TestIngestAuth(t *testing.T) {
	s := startStack(t, nil)
	body := mustJSON(t, ev("auth-1", nil))
	var p problem

	resp := s.post(t, "", metering.MediaTypeEvent, body)
	if resp.status != http.StatusUnauthorized || resp.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %s", resp.status, resp.body)
	}
	resp = s.post(t, "not.a.token", metering.MediaTypeEvent, body)
	if resp.status != http.StatusUnauthorized {
		t.Fatalf("bad token: %d %s", resp.status, resp.body)
	}
	resp = s.post(t, s.tokens.issue(t, []string{"acme"}, "billing_reader"), metering.MediaTypeEvent, body)
	resp.json(t, &p)
	if resp.status != http.StatusForbidden || !strings.Contains(p.Detail, metering.PermissionWrite) {
		t.Fatalf("without metering.write: %d %s", resp.status, resp.body)
	}
	resp = s.post(t, s.tokens.issue(t, []string{"globex"}, metering.PermissionWrite), metering.MediaTypeEvent, body)
	resp.json(t, &p)
	if resp.status != http.StatusForbidden || p.Type != httpx.ProblemBase+"tenant-forbidden" || len(p.Errors) != 1 || p.Errors[0].Field != "subject" {
		t.Fatalf("other tenant: %d %s", resp.status, resp.body)
	}
	// A batch of only other-tenant events is 403 as a whole.
	resp = s.post(t, s.tokens.issue(t, []string{"globex"}, metering.PermissionWrite), metering.MediaTypeBatch, mustJSON(t, []any{ev("a", nil)}))
	if resp.status != http.StatusForbidden {
		t.Fatalf("batch for another tenant: %d %s", resp.status, resp.body)
	}
	// The wildcard tenant and the admin role may write.
	if resp = s.post(t, s.tokens.issue(t, []string{"*"}, "admin"), metering.MediaTypeEvent, body); resp.status != http.StatusAccepted {
		t.Fatalf("admin: %d %s", resp.status, resp.body)
	}
	if n := len(s.kafka.records(t, events.TopicMetering)); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
}

func TestIngestLimits(t *testing.T) {
	s := startStack(t, func(c *metering.Config) { c.MaxBodyBytes = 16 << 10 })
	big := make([]any, 300)
	for i := range big {
		big[i] = ev(fmt.Sprintf("big-%d", i), nil)
	}
	resp := s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, big))
	if resp.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("body too large: %d %s", resp.status, resp.body)
	}

	s = startStack(t, nil)
	batch := make([]any, metering.MaxBatchLimit+1)
	for i := range batch {
		batch[i] = ev(fmt.Sprintf("many-%d", i), nil)
	}
	resp = s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, batch))
	var p problem
	resp.json(t, &p)
	if resp.status != http.StatusUnprocessableEntity || len(p.Errors) != 1 || p.Errors[0].Field != "body" {
		t.Fatalf("batch too large: %d %s", resp.status, resp.body)
	}
	// Exactly the maximum is fine.
	resp = s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, batch[:metering.MaxBatchLimit]))
	if resp.status != http.StatusAccepted {
		t.Fatalf("max batch: %d %.300s", resp.status, resp.body)
	}
	if n := len(s.kafka.records(t, events.TopicMetering)); n != metering.MaxBatchLimit {
		t.Fatalf("%d records", n)
	}
	// One event over MaxEventBytes.
	huge := ev("huge", func(e map[string]any) { e["pad"] = strings.Repeat("p", metering.MaxEventBytes) })
	if resp = s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, huge)); resp.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("huge event: %d %.300s", resp.status, resp.body)
	}
}

func TestIngestBrokerDown(t *testing.T) {
	s := startStack(t, func(c *metering.Config) { c.Timeout = 1500 * time.Millisecond })
	if resp := s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("before", nil))); resp.status != http.StatusAccepted {
		t.Fatalf("%d %s", resp.status, resp.body)
	}
	s.kafka.broker.Close()
	start := time.Now()
	resp := s.post(t, s.token, metering.MediaTypeBatch, mustJSON(t, []any{ev("after-1", nil), ev("after-2", nil)}))
	var p problem
	resp.json(t, &p)
	if resp.status != http.StatusServiceUnavailable || resp.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, "none is reported accepted") {
		t.Fatalf("broker down: %d %s", resp.status, resp.body)
	}
	if strings.Contains(string(resp.body), "accepted\":[") {
		t.Fatalf("503 claims acceptance: %s", resp.body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("503 took %s", d)
	}
	// Nothing failed was remembered as acknowledged: the retry is not a
	// "duplicate" (it would 503 again here, not 202).
	resp = s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("after-1", nil)))
	if resp.status != http.StatusServiceUnavailable {
		t.Fatalf("retry while down: %d %s", resp.status, resp.body)
	}
	if got := s.counter(t, "accepted"); got != 1 {
		t.Fatalf("accepted counter %v, want 1", got)
	}
}

func TestIngestNotReady(t *testing.T) {
	s := startStack(t, func(c *metering.Config) { c.Ready = func() bool { return false } })
	if resp := s.post(t, s.token, metering.MediaTypeEvent, mustJSON(t, ev("r", nil))); resp.status != http.StatusServiceUnavailable {
		t.Fatalf("%d %s", resp.status, resp.body)
	}
}

func TestConfigValidate(t *testing.T) {
	err := metering.Config{MaxBatchEvents: 5000, MaxBodyBytes: -1}.Validate()
	for _, want := range []string{"producer required", "token verifier required", "metrics required", "max batch events", "max body bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
	if _, err := metering.NewAPI(metering.Config{}); err == nil {
		t.Fatal("NewAPI accepted an empty config")
	}
	// Registering twice on one registry is an error, not a panic.
	k := startKafka(t)
	reg := prometheus.NewRegistry()
	cfg := metering.Config{Producer: k.client(t), Tokens: newTokens(t).verifier, Metrics: httpx.NewMetrics(reg), Registerer: reg}
	if _, err := metering.NewAPI(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := metering.NewAPI(cfg); err == nil {
		t.Fatal("second registration accepted")
	}
}

func TestRoutes(t *testing.T) {
	if len(metering.Routes) != 1 || metering.Routes[0] != "POST /v1/metering/events" {
		t.Fatalf("Routes = %v", metering.Routes)
	}
}
