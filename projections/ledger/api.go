package ledger

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keystore"
)

// TokenVerifier authenticates bearer tokens.
type TokenVerifier = httpx.TokenVerifier

// APIConfig configures the provenance API.
type APIConfig struct {
	Ledger  *Ledger        // required
	Tokens  TokenVerifier  // required
	Metrics *httpx.Metrics // required
	// Disclose decides ?disclose= requests (optional; without it every
	// disclosure is refused with 403).
	Disclose DiscloseAuthorizer
	// SubjectKeys opens sealed selective values (optional; without it
	// disclosure answers 503).
	SubjectKeys SubjectKeyReader
}

// DiscloseAuthorizer is the policy check of the provenance.disclose action:
// may the caller see these selective fields of subject in tenant?
type DiscloseAuthorizer func(ctx context.Context, c auth.Claims, tenant, subject string, fields []string) DiscloseDecision

// DiscloseDecision is a DiscloseAuthorizer's answer. StepUp, when set, means
// the caller must first log in again with MFA (answered 401 with a
// challenge); Rationale explains a refusal.
type DiscloseDecision struct {
	Allow     bool
	Rationale json.RawMessage
	StepUp    *httpx.StepUp
}

// SubjectKeyReader returns a subject key by id (internal/keystore.Store);
// an error wrapping keystore.ErrShredded means the value was erased.
type SubjectKeyReader interface {
	ByID(ctx context.Context, id int64) ([]byte, error)
}

// API serves /v1/provenance.
type API struct{ cfg APIConfig }

// Routes are the API's routes, for the OpenAPI contract test.
var Routes = []string{
	"GET /v1/provenance/receipts/{id}",
	"GET /v1/provenance/receipts",
	"GET /v1/provenance/checkpoints/{tenant}",
}

// MaxListLimit bounds one page of GET /v1/provenance/receipts.
const MaxListLimit = 1000

// NewAPI validates cfg.
func NewAPI(cfg APIConfig) (*API, error) {
	var errs []error
	if cfg.Ledger == nil {
		errs = append(errs, errors.New("ledger api: ledger required"))
	}
	if cfg.Tokens == nil {
		errs = append(errs, errors.New("ledger api: token verifier required"))
	}
	if cfg.Metrics == nil {
		errs = append(errs, errors.New("ledger api: metrics required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &API{cfg: cfg}, nil
}

// Register mounts the routes.
func (a *API) Register(mux *http.ServeMux) {
	for route, h := range map[string]http.HandlerFunc{
		Routes[0]: a.getReceipt,
		Routes[1]: a.listReceipts,
		Routes[2]: a.checkpoints,
	} {
		mux.Handle(route, a.cfg.Metrics.Instrument(route[len("GET "):], h))
	}
}

var tenantRe = auth.TenantPattern

func problem(w http.ResponseWriter, status int, kind, field, detail string) {
	p := httpx.NewProblem(status, kind, detail)
	if field != "" {
		p.Errors = []httpx.FieldError{{Field: field, Detail: detail}}
	}
	httpx.WriteProblem(w, p)
}

func (a *API) claims(w http.ResponseWriter, r *http.Request) (auth.Claims, bool) {
	return httpx.Authenticate(w, r, a.cfg.Tokens)
}

func (a *API) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		problem(w, http.StatusNotFound, "not-found", "", err.Error())
	case errors.Is(err, ErrInvalidRange):
		problem(w, http.StatusUnprocessableEntity, "validation", "", err.Error())
	default:
		problem(w, http.StatusInternalServerError, "internal", "", err.Error())
	}
}

// InclusionProof is a receipt's Merkle audit path against a checkpoint.
type InclusionProof struct {
	TreeSize  int64       `json:"tree_size"`
	LeafIndex int64       `json:"leaf_index"` // seq − 1
	Hashes    []tlog.Hash `json:"hashes"`
}

// ReceiptResponse is GET /v1/provenance/receipts/{id}. Verify offline:
// the envelope's DSSE signature (GET /v1/keys), then
// tlog.CheckRecord(hashes, tree_size, checkpoint root, leaf_index,
// tlog.RecordHash(envelope.payload)), then the checkpoint note with
// verifier_key.
type ReceiptResponse struct {
	ID          string          `json:"id"`
	Tenant      string          `json:"tenant"`
	Seq         int64           `json:"seq"`
	Envelope    json.RawMessage `json:"envelope"`
	Redactions  json.RawMessage `json:"redactions"`
	Inclusion   InclusionProof  `json:"inclusion_proof"`
	Checkpoint  Checkpoint      `json:"checkpoint"`
	VerifierKey string          `json:"verifier_key"`
	// Disclosed holds the values revealed by ?disclose=; each verifies with
	// events.VerifyDisclosure against the payload's selective commitment.
	Disclosed []events.Disclosure `json:"disclosed,omitempty"`
	// Erased lists requested fields whose values were crypto-shredded.
	Erased []string `json:"erased,omitempty"`
}

func (a *API) getReceipt(w http.ResponseWriter, r *http.Request) {
	c, ok := a.claims(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	l := a.cfg.Ledger
	rc, err := l.Receipt(r.Context(), id)
	if err == nil && !c.AllowsTenant(rc.Tenant) {
		// Another tenant's receipt is indistinguishable from a missing one.
		err = fmt.Errorf("%w: receipt %s", ErrNotFound, id)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	cp, err := l.LatestCheckpoint(r.Context(), rc.Tenant)
	if errors.Is(err, ErrNotFound) || (err == nil && cp.TreeSize < rc.Seq) {
		cp, err = l.Checkpoint(r.Context(), rc.Tenant) // on demand: cover this receipt now
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	proof, err := l.InclusionProof(r.Context(), rc.Tenant, rc.Seq, cp.TreeSize)
	if err != nil {
		a.fail(w, err)
		return
	}
	resp := ReceiptResponse{ID: rc.ID, Tenant: rc.Tenant, Seq: rc.Seq, Envelope: rc.Envelope, Redactions: rc.Redactions,
		Inclusion: InclusionProof{TreeSize: cp.TreeSize, LeafIndex: rc.Seq - 1, Hashes: nonNil(proof)}, Checkpoint: cp, VerifierKey: l.VerifierKey()}
	if v := r.URL.Query().Get("disclose"); v != "" {
		if !a.disclose(w, r, c, rc, v, &resp) {
			return
		}
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// disclose fills resp with the requested selective values, after the
// policy allowed the caller to see them. It answers the request itself and
// returns false when it refuses.
func (a *API) disclose(w http.ResponseWriter, r *http.Request, c auth.Claims, rc Receipt, list string, resp *ReceiptResponse) bool {
	var redacted []string
	_ = json.Unmarshal(rc.Redactions, &redacted)
	fields := strings.Split(list, ",")
	for i, f := range fields {
		f = strings.TrimSpace(f)
		fields[i] = f
		if !slices.Contains(redacted, f) {
			problem(w, http.StatusUnprocessableEntity, "validation", "query.disclose",
				fmt.Sprintf("receipt %s has no selective field %q (selective: %s)", rc.ID, f, strings.Join(redacted, ", ")))
			return false
		}
	}
	slices.Sort(fields)
	fields = slices.Compact(fields)
	if a.cfg.Disclose == nil {
		problem(w, http.StatusForbidden, "policy-denied", "query.disclose", "disclosure is not enabled on this server")
		return false
	}
	dd := a.cfg.Disclose(r.Context(), c, rc.Tenant, rc.Subject, fields)
	if dd.StepUp != nil {
		dd.StepUp.Challenge(w, "provenance.disclose")
		return false
	}
	if !dd.Allow {
		p := httpx.NewProblem(http.StatusForbidden, "policy-denied", "policy denied provenance.disclose of "+strings.Join(fields, ", "))
		p.Errors = []httpx.FieldError{{Field: "query.disclose", Detail: "not allowed by policy"}}
		p.Rationale = dd.Rationale
		httpx.WriteProblem(w, p)
		return false
	}
	if a.cfg.SubjectKeys == nil {
		problem(w, http.StatusServiceUnavailable, "unavailable", "", "the keystore is not configured on this server")
		return false
	}
	sealed, err := a.cfg.Ledger.Disclosures(r.Context(), rc.ID)
	if err != nil {
		a.fail(w, err)
		return false
	}
	for _, f := range fields {
		s, ok := sealed[f]
		if !ok {
			// Denied commands keep no values; a receipt projected before
			// its header was readable has none either.
			resp.Erased = append(resp.Erased, f)
			continue
		}
		key, err := a.cfg.SubjectKeys.ByID(r.Context(), s.KeyID)
		if errors.Is(err, keystore.ErrShredded) {
			resp.Erased = append(resp.Erased, f)
			continue
		}
		if err != nil {
			a.fail(w, err)
			return false
		}
		d, err := events.Open(key, rc.ID, f, s.Sealed)
		if err != nil {
			a.fail(w, err)
			return false
		}
		resp.Disclosed = append(resp.Disclosed, d)
	}
	return true
}

func nonNil(h []tlog.Hash) []tlog.Hash {
	if h == nil {
		return []tlog.Hash{}
	}
	return h
}

// ListedReceipt is one row of GET /v1/provenance/receipts.
type ListedReceipt struct {
	Receipt
	Envelope json.RawMessage `json:"envelope"`
}

// ListResponse is GET /v1/provenance/receipts.
type ListResponse struct {
	Receipts   []ListedReceipt `json:"receipts"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

func (a *API) listReceipts(w http.ResponseWriter, r *http.Request) {
	c, ok := a.claims(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := Filter{Tenant: q.Get("tenant"), Actor: q.Get("actor"), Action: q.Get("action")}
	switch {
	case f.Tenant == "":
		problem(w, http.StatusUnprocessableEntity, "validation", "query.tenant", "required")
		return
	case !tenantRe.MatchString(f.Tenant):
		problem(w, http.StatusUnprocessableEntity, "validation", "query.tenant", "must match "+tenantRe.String())
		return
	}
	for _, tf := range []struct {
		name string
		dst  *time.Time
	}{{"from", &f.From}, {"to", &f.To}} {
		if v := q.Get(tf.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				problem(w, http.StatusUnprocessableEntity, "validation", "query."+tf.name, "must be an RFC 3339 time")
				return
			}
			*tf.dst = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			problem(w, http.StatusUnprocessableEntity, "validation", "query.limit", fmt.Sprintf("must be between 1 and %d", MaxListLimit))
			return
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		seq, err := decodeCursor(v)
		if err != nil {
			problem(w, http.StatusUnprocessableEntity, "validation", "query.cursor", "invalid cursor")
			return
		}
		f.AfterSeq = seq
	}
	if !c.AllowsTenant(f.Tenant) {
		problem(w, http.StatusNotFound, "not-found", "query.tenant", "no tenant "+f.Tenant)
		return
	}
	rs, more, err := a.cfg.Ledger.List(r.Context(), f)
	if err != nil {
		a.fail(w, err)
		return
	}
	resp := ListResponse{Receipts: make([]ListedReceipt, len(rs))}
	for i, rc := range rs {
		resp.Receipts[i] = ListedReceipt{Receipt: rc, Envelope: rc.Envelope}
	}
	if more {
		resp.NextCursor = encodeCursor(rs[len(rs)-1].Seq)
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// Cursors are opaque to clients; today they carry the last seq returned.
func encodeCursor(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("s:" + strconv.FormatInt(seq, 10)))
}

func decodeCursor(s string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 3 || string(b[:2]) != "s:" {
		return 0, errors.New("invalid cursor")
	}
	n, err := strconv.ParseInt(string(b[2:]), 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("invalid cursor")
	}
	return n, nil
}

// ConsistencyResponse is GET /v1/provenance/checkpoints/{tenant}?old=N&new=M.
// Verify with tlog.CheckTree(hashes, new, root of new, old, root of old).
type ConsistencyResponse struct {
	Tenant  string      `json:"tenant"`
	Old     int64       `json:"old"`
	New     int64       `json:"new"`
	OldRoot tlog.Hash   `json:"old_root"`
	NewRoot tlog.Hash   `json:"new_root"`
	Hashes  []tlog.Hash `json:"hashes"`
}

// CheckpointResponse is GET /v1/provenance/checkpoints/{tenant}.
type CheckpointResponse struct {
	Checkpoint
	VerifierKey string `json:"verifier_key"`
}

func (a *API) checkpoints(w http.ResponseWriter, r *http.Request) {
	c, ok := a.claims(w, r)
	if !ok {
		return
	}
	tenant := r.PathValue("tenant")
	if !tenantRe.MatchString(tenant) || !c.AllowsTenant(tenant) {
		problem(w, http.StatusNotFound, "not-found", "tenant", "no tenant "+tenant)
		return
	}
	l := a.cfg.Ledger
	q := r.URL.Query()
	if q.Has("old") || q.Has("new") {
		oldSize, err1 := strconv.ParseInt(q.Get("old"), 10, 64)
		newSize, err2 := strconv.ParseInt(q.Get("new"), 10, 64)
		if err1 != nil || err2 != nil {
			problem(w, http.StatusUnprocessableEntity, "validation", "query.old", "old and new must both be tree sizes")
			return
		}
		proof, err := l.ConsistencyProof(r.Context(), tenant, oldSize, newSize)
		if err != nil {
			a.fail(w, err)
			return
		}
		oldRoot, err := l.TreeHash(r.Context(), tenant, oldSize)
		if err != nil {
			a.fail(w, err)
			return
		}
		newRoot, err := l.TreeHash(r.Context(), tenant, newSize)
		if err != nil {
			a.fail(w, err)
			return
		}
		httpx.WriteJSON(w, http.StatusOK, ConsistencyResponse{Tenant: tenant, Old: oldSize, New: newSize, OldRoot: oldRoot, NewRoot: newRoot, Hashes: nonNil(proof)})
		return
	}
	cp, err := l.LatestCheckpoint(r.Context(), tenant)
	if errors.Is(err, ErrNotFound) {
		cp, err = l.Checkpoint(r.Context(), tenant)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, CheckpointResponse{Checkpoint: cp, VerifierKey: l.VerifierKey()})
}
