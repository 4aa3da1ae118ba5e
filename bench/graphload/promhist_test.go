package graphload

import (
	"math"
	"strings"
	"testing"
)

const metricsBefore = `# HELP graph_query_ms Graph query execution time in milliseconds.
# TYPE graph_query_ms histogram
graph_query_ms_bucket{op="rel",le="1"} 10
graph_query_ms_bucket{op="rel",le="5"} 20
graph_query_ms_bucket{op="rel",le="10"} 20
graph_query_ms_bucket{op="rel",le="+Inf"} 20
graph_query_ms_sum{op="rel"} 40
graph_query_ms_count{op="rel"} 20
graph_query_ms_bucket{op="neighbors",le="1"} 4
graph_query_ms_bucket{op="neighbors",le="5"} 4
graph_query_ms_bucket{op="neighbors",le="10"} 4
graph_query_ms_bucket{op="neighbors",le="+Inf"} 4
graph_query_ms_sum{op="neighbors"} 2
graph_query_ms_count{op="neighbors"} 4
graph_query_ms_bucket{le="1",op="path"} 10
graph_query_ms_bucket{le="5",op="path"} 10
graph_query_ms_bucket{le="10",op="path"} 10
graph_query_ms_bucket{le="+Inf",op="path"} 10
graph_query_ms_sum{op="path"} 5
graph_query_ms_count{op="path"} 10
# HELP http_request_duration_seconds other families are skipped
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route="/v1/graph/query",le="0.1"} 99
process_cpu_seconds_total 12.5
`

const metricsAfter = `# HELP graph_query_ms Graph query execution time in milliseconds.
# TYPE graph_query_ms histogram
graph_query_ms_bucket{op="rel",le="1"} 10
graph_query_ms_bucket{op="rel",le="5"} 70
graph_query_ms_bucket{op="rel",le="10"} 120
graph_query_ms_bucket{op="rel",le="+Inf"} 120
graph_query_ms_sum{op="rel"} 790
graph_query_ms_count{op="rel"} 120
graph_query_ms_bucket{op="neighbors",le="1"} 4
graph_query_ms_bucket{op="neighbors",le="5"} 4
graph_query_ms_bucket{op="neighbors",le="10"} 4
graph_query_ms_bucket{op="neighbors",le="+Inf"} 4
graph_query_ms_sum{op="neighbors"} 2
graph_query_ms_count{op="neighbors"} 4
graph_query_ms_bucket{le="1",op="path"} 2
graph_query_ms_bucket{le="5",op="path"} 3
graph_query_ms_bucket{le="10",op="path"} 3
graph_query_ms_bucket{le="+Inf",op="path"} 3
graph_query_ms_sum{op="path"} 4
graph_query_ms_count{op="path"} 3
graph_query_ms_bucket{op="who_can",note="a \"quoted\" \\ label",le="1000"} 0 1700000000000
graph_query_ms_bucket{op="who_can",note="a \"quoted\" \\ label",le="2500"} 8 1700000000000
graph_query_ms_bucket{op="who_can",note="a \"quoted\" \\ label",le="+Inf"} 10 1700000000000
graph_query_ms_sum{op="who_can",note="a \"quoted\" \\ label"} 19000
graph_query_ms_count{op="who_can",note="a \"quoted\" \\ label"} 10
process_cpu_seconds_total 20
`

func TestHistogramDiffQuantiles(t *testing.T) {
	before, err := ParseHistogram(strings.NewReader(metricsBefore), "graph_query_ms", "op")
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseHistogram(strings.NewReader(metricsAfter), "graph_query_ms", "op")
	if err != nil {
		t.Fatal(err)
	}
	if got := after["rel"].Le[math.Inf(1)]; got != 120 {
		t.Fatalf("rel +Inf bucket = %v, want 120", got)
	}
	diff := Diff(before, after)
	if _, ok := diff["neighbors"]; ok {
		t.Errorf("neighbors had no observations between the scrapes, but is in the diff: %+v", diff["neighbors"])
	}
	rel := diff["rel"]
	if rel == nil || rel.Count != 100 || rel.Sum != 750 {
		t.Fatalf("rel diff = %+v, want count 100, sum 750", rel)
	}
	// rel between the scrapes: 0 in [0,1], 50 in (1,5], 50 in (5,10].
	for _, c := range []struct{ q, want float64 }{
		{.25, 3},   // rank 25 of the 50 in (1,5]: 1 + 4·25/50
		{.50, 5},   // the top of (1,5]
		{.95, 9.5}, // rank 45 of the 50 in (5,10]: 5 + 5·45/50
		{.99, 9.9},
	} {
		if got := rel.Quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("rel p%v = %v, want %v", c.q*100, got, c.want)
		}
	}
	// who_can is new since the first scrape: 8 in (1000,2500], 2 above.
	wc := diff["who_can"]
	if wc == nil || wc.Count != 10 {
		t.Fatalf("who_can diff = %+v", wc)
	}
	if got, want := wc.Quantile(.5), 1000+1500*5.0/8; math.Abs(got-want) > 1e-9 {
		t.Errorf("who_can p50 = %v, want %v", got, want)
	}
	if got := wc.Quantile(.99); got != 2500 {
		t.Errorf("who_can p99 = %v, want 2500 (the largest finite bound: a rank in +Inf is a lower bound)", got)
	}
	// path's count went down: the server restarted, after is the diff.
	if p := diff["path"]; p == nil || p.Count != 3 || p.Le[1] != 2 || p.Quantile(.5) != 0.75 {
		t.Errorf("path diff after a reset = %+v, p50 %v; want count 3 and p50 0.75", p, p.Quantile(.5))
	}

	ops := serverOps(diff)
	if o := ops["who_can"]; o.OverMaxBucket != 2 || o.MeanMS != 1900 || o.P99MS != 2500 {
		t.Errorf("server who_can = %+v", o)
	}
	if o := ops["rel"]; o.P50MS != 5 || o.P95MS != 9.5 || o.MeanMS != 7.5 || o.OverMaxBucket != 0 {
		t.Errorf("server rel = %+v", o)
	}
}

func TestQuantileEmpty(t *testing.T) {
	if q := (&Buckets{Le: map[float64]float64{1: 0, math.Inf(1): 0}}).Quantile(.5); !math.IsNaN(q) {
		t.Errorf("quantile of an empty histogram = %v, want NaN", q)
	}
}

func TestParseHistogramErrors(t *testing.T) {
	for _, bad := range []string{
		`graph_query_ms_bucket{op="rel"} 1`,
		`graph_query_ms_bucket{op="rel",le="x"} 1`,
		`graph_query_ms_bucket{op="rel,le="1"} 1`,
		`graph_query_ms_count{op="rel"}`,
	} {
		if _, err := ParseHistogram(strings.NewReader(bad), "graph_query_ms", "op"); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestLatencyHist(t *testing.T) {
	var h latencyHist
	for us := 1; us <= 100000; us++ { // 1µs … 100ms, uniform
		h.record(durationUS(us))
	}
	s := h.summary()
	for _, c := range []struct{ got, want float64 }{{s.P50, 50}, {s.P90, 90}, {s.P99, 99}, {s.Max, 100}} {
		if c.got < c.want || c.got > c.want*1.02 {
			t.Errorf("quantile %v ms, want within 2%% above %v ms (summary %+v)", c.got, c.want, s)
		}
	}
	for i := range histBuckets - 1 {
		if histBucket(histHigh(i)) != i || histBucket(histHigh(i)+1) != i+1 {
			t.Fatalf("bucket %d: high %d maps to %d, high+1 to %d", i, histHigh(i), histBucket(histHigh(i)), histBucket(histHigh(i)+1))
		}
	}
}
