package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/companyos/companyos/internal/stores"
)

// TestRunSmall runs the whole benchmark on a few receipts, so the program
// keeps working between the (long) real runs.
func TestRunSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{DSN: stores.TestPostgres(t), Receipts: 1500, Checkpoints: 4, Rounds: 1, Workers: 2, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.WriteText(&out)
	t.Log("\n" + out.String())
	if res.Export.PerSecond <= 0 || res.Verify[0].PerSecond <= 0 || res.Bare[0].PerSecond <= 0 || !strings.Contains(out.String(), "verify / bare") {
		t.Fatalf("results: %+v", res)
	}
}
