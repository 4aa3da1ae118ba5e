package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
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
