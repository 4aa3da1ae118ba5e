package audit

import (
	"bytes"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	_, b := standard(t)
	rep, err := verifyBytes(t, b, VerifyOptions{Strict: true})
	if err != nil {
		t.Fatalf("%v\n%s", err, describe(rep))
	}
	if !rep.OK || rep.Receipts != 30 || rep.FirstSeq != 1 || rep.LastSeq != 30 || rep.TreeSize != 30 || rep.Checkpoints != 3 || rep.Proofs != 2 {
		t.Fatalf("report:\n%s", describe(rep))
	}
	t.Log("\n" + describe(rep))
}

func TestExportDeterministic(t *testing.T) {
	e, b1 := standard(t)
	b2, _ := e.export("acme", t0, t0.Add(24*time.Hour), nil)
	if !bytes.Equal(b1, b2) {
		t.Fatalf("two exports differ: %d and %d bytes", len(b1), len(b2))
	}
}
