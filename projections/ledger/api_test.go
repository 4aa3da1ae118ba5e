package ledger

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
)

type fakeTokens map[string]auth.Claims

func (f fakeTokens) Verify(tok string) (auth.Claims, error) {
	c, ok := f[tok]
	if !ok {
		return auth.Claims{}, errors.New("bad token")
	}
	return c, nil
}

func TestAPI(t *testing.T) {
	e := newEnv(t)
	e.produceChain("acme", 25)
	e.produceChain("globex", 3)
	p := e.projector(nil)
	if err := e.runUntil(p, e.caughtUp); err != nil {
		t.Fatal(err)
	}
	api, err := NewAPI(APIConfig{Ledger: p.Ledger(), Metrics: httpx.NewMetrics(prometheus.NewRegistry()), Tokens: fakeTokens{
		"acme":  {Principal: "user:alice", Tenants: []string{"acme"}},
		"admin": {Principal: "user:admin", Tenants: []string{"*"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	get := func(tok, path string, into any) int {
		t.Helper()
		req := httptest.NewRequest("GET", path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if into != nil && rec.Code == 200 {
			if err := json.Unmarshal(rec.Body.Bytes(), into); err != nil {
				t.Fatal(err)
			}
		}
		return rec.Code
	}

	var rr ReceiptResponse
	if code := get("acme", "/v1/provenance/receipts/rcpt_acme_9_9", &rr); code != 200 {
		t.Fatalf("get receipt: %d", code)
	}
	env, err := events.ParseEnvelope(rr.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Verify(keySetOf(e)); err != nil {
		t.Fatal(err)
	}
	v, _ := note.NewVerifier(rr.VerifierKey)
	n, err := note.Open([]byte(rr.Checkpoint.Note), note.VerifierList(v))
	if err != nil {
		t.Fatal(err)
	}
	_, size, root, err := ParseCheckpointText(n.Text)
	if err != nil || size != rr.Inclusion.TreeSize {
		t.Fatalf("checkpoint %q: %v", n.Text, err)
	}
	if err := tlog.CheckRecord(rr.Inclusion.Hashes, size, root, rr.Inclusion.LeafIndex, tlog.RecordHash(env.Payload)); err != nil {
		t.Fatal(err)
	}
	// Another tenant's token: 404, not 403. No token: 401.
	if code := get("acme", "/v1/provenance/receipts/rcpt_globex_1_1", nil); code != 404 {
		t.Fatalf("cross-tenant receipt: %d", code)
	}
	if code := get("", "/v1/provenance/receipts/rcpt_acme_1_1", nil); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code := get("acme", "/v1/provenance/receipts?tenant=globex", nil); code != 404 {
		t.Fatalf("cross-tenant list: %d", code)
	}

	// Pagination by seq, with an actor filter.
	var seqs []int64
	cursor := ""
	for pages := 0; ; pages++ {
		var lr ListResponse
		path := "/v1/provenance/receipts?tenant=acme&actor=user:alice&limit=4"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		if code := get("acme", path, &lr); code != 200 {
			t.Fatalf("list: %d", code)
		}
		for _, r := range lr.Receipts {
			seqs = append(seqs, r.Seq)
		}
		if lr.NextCursor == "" {
			break
		}
		cursor = lr.NextCursor
	}
	if len(seqs) != 13 || seqs[0] != 1 || seqs[12] != 25 {
		t.Fatalf("alice's seqs = %v", seqs)
	}
	if code := get("acme", "/v1/provenance/receipts?tenant=acme&limit=0", nil); code != 422 {
		t.Fatalf("limit 0: %d", code)
	}

	// Latest checkpoint, then a consistency proof between two sizes.
	var cp CheckpointResponse
	if code := get("admin", "/v1/provenance/checkpoints/acme", &cp); code != 200 || cp.TreeSize != 25 {
		t.Fatalf("checkpoint: %d %+v", code, cp)
	}
	var cr ConsistencyResponse
	if code := get("admin", "/v1/provenance/checkpoints/acme?old=7&new=25", &cr); code != 200 {
		t.Fatalf("consistency: %d", code)
	}
	if cr.NewRoot != cp.RootHash {
		t.Fatal("new root differs from the checkpoint")
	}
	if err := tlog.CheckTree(cr.Hashes, 25, cr.NewRoot, 7, cr.OldRoot); err != nil {
		t.Fatal(err)
	}
	if code := get("admin", "/v1/provenance/checkpoints/acme?old=7&new=26", nil); code != 422 {
		t.Fatalf("beyond tree: %d", code)
	}
	if code := get("acme", "/v1/provenance/checkpoints/globex", nil); code != 404 {
		t.Fatalf("cross-tenant checkpoint: %d", code)
	}
}
