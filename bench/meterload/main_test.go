package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/companyos/companyos/metering"
)

// A short run against the in-process stack accepts every event it sends.
func TestRunInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker")
	}
	var out, errs bytes.Buffer
	code := run(context.Background(), []string{"--duration", "1s", "--warmup", "200ms", "--rate", "2000", "--batch", "100",
		"--partitions", "2", "--json"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errs.String())
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.EventsOK == 0 || res.Status["202"] == 0 || len(res.Status) != 1 || res.LatencyMS.P50 <= 0 {
		t.Fatalf("%+v", res)
	}
}

func TestE2EHelpers(t *testing.T) {
	if got := quantile([]float64{5, 1, 4, 2, 3}, .5); got != 3 {
		t.Errorf("p50 = %v", got)
	}
	if got := quantile([]float64{5, 1, 4, 2, 3}, 1); got != 5 {
		t.Errorf("max = %v", got)
	}
	if got := quantile(nil, .95); got != 0 {
		t.Errorf("empty = %v", got)
	}
	if got := lagOf(map[int32]int64{0: 10, 1: 5}, map[int32]int64{0: 7}); got != 8 {
		t.Errorf("lag = %d, want 8", got)
	}
	e := newE2ERun(e2eConfig{sampleEvery: 1000})
	if e.source(2000) != e.probeSource || e.source(2001) == e.probeSource {
		t.Error("probes are every 1000th event")
	}
	now := time.Now()
	e.accepted(2000, now, now, 8)
	e.accepted(2001, now, now, 8)
	if e.acceptedN.Load() != 2 || e.quarters.Load() != 4*0+1+4*1+1 || e.pendingCount() != 1 || e.probes[0].tenant != "bench-0" {
		t.Errorf("accepted %d, quarters %d, pending %d", e.acceptedN.Load(), e.quarters.Load(), e.pendingCount())
	}
}

// The e2e body carries the run's team tag and probe source, and stays
// valid CloudEvents.
func TestE2EBody(t *testing.T) {
	e := newE2ERun(e2eConfig{sampleEvery: 2})
	r := &runner{c: config{batch: 4, tenants: 3}, e2e: e, runID: e.runID, source: e.source, team: e.team}
	body, ns := r.body(nil)
	var evs []metering.Event
	if err := json.Unmarshal(body, &evs); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 || len(ns) != 4 {
		t.Fatalf("%d events, %d numbers", len(evs), len(ns))
	}
	for i, ev := range evs {
		if ev.Data.Tags["team"] != e.team || (ns[i]%2 == 0) != (ev.Source == e.probeSource) {
			t.Errorf("event %d: %+v", i, ev)
		}
		if _, err := metering.DecodeEvent(mustJSON(t, ev)); err != nil {
			t.Errorf("event %d invalid: %v", i, err)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
