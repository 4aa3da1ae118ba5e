package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
)

// TokenVerifier authenticates bearer tokens.
type TokenVerifier = httpx.TokenVerifier

// APIConfig configures the graph query API.
type APIConfig struct {
	Projector  *Projector     // required
	Tokens     TokenVerifier  // required
	Authorizer Authorizer     // required for who_can
	Metrics    *httpx.Metrics // required
	Registerer prometheus.Registerer
	// ConsistencyTimeout bounds a read-your-writes wait (optional, default 5s).
	ConsistencyTimeout time.Duration
	// Limits are the query limits (optional; graph defaults).
	Limits Options
}

// API serves POST /v1/graph/query.
type API struct {
	cfg     APIConfig
	queryMS *prometheus.HistogramVec
}

// Routes are the API's routes, for the OpenAPI contract test.
var Routes = []string{"POST /v1/graph/query"}

// NewAPI validates cfg.
func NewAPI(cfg APIConfig) (*API, error) {
	var errs []error
	if cfg.Projector == nil {
		errs = append(errs, errors.New("graph api: projector required"))
	}
	if cfg.Tokens == nil {
		errs = append(errs, errors.New("graph api: token verifier required"))
	}
	if cfg.Metrics == nil {
		errs = append(errs, errors.New("graph api: metrics required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.ConsistencyTimeout <= 0 {
		cfg.ConsistencyTimeout = 5 * time.Second
	}
	a := &API{cfg: cfg}
	a.queryMS = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "graph_query_ms",
		Help:    "Graph query execution time in milliseconds (excluding read-your-writes waits), by query form.",
		Buckets: []float64{.1, .25, .5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500},
	}, []string{"op"})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(a.queryMS)
	}
	return a, nil
}

// Register mounts the routes.
func (a *API) Register(mux *http.ServeMux) {
	mux.Handle("POST /v1/graph/query", a.cfg.Metrics.Instrument("/v1/graph/query", http.HandlerFunc(a.query)))
}

// QueryRequest is the body of POST /v1/graph/query. Query is either the
// query language as a string or the structured JSON form.
type QueryRequest struct {
	Tenant      string          `json:"tenant"`
	Query       json.RawMessage `json:"query"`
	Vars        map[string]any  `json:"vars,omitempty"`
	Consistency string          `json:"consistency,omitempty"`
	Limit       int             `json:"limit,omitempty"`
	Cursor      string          `json:"cursor,omitempty"`
}

var tenantRe = auth.TenantPattern

func problem(w http.ResponseWriter, status int, kind, field, detail string) {
	p := httpx.NewProblem(status, kind, detail)
	if field != "" {
		p.Errors = []httpx.FieldError{{Field: field, Detail: detail}}
	}
	httpx.WriteProblem(w, p)
}

func (a *API) query(w http.ResponseWriter, r *http.Request) {
	claims, ok := httpx.Authenticate(w, r, a.cfg.Tokens)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		problem(w, http.StatusRequestEntityTooLarge, "too-large", "body", err.Error())
		return
	}
	var req QueryRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		status, field := http.StatusBadRequest, "body"
		if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
			status, field = http.StatusUnprocessableEntity, strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
		}
		problem(w, status, "validation", field, err.Error())
		return
	}
	switch {
	case req.Tenant == "":
		problem(w, http.StatusUnprocessableEntity, "validation", "tenant", "required")
		return
	case !tenantRe.MatchString(req.Tenant):
		problem(w, http.StatusUnprocessableEntity, "validation", "tenant", "must match "+tenantRe.String())
		return
	case len(req.Query) == 0 || string(req.Query) == "null":
		problem(w, http.StatusUnprocessableEntity, "validation", "query", "required")
		return
	case req.Limit < 0 || req.Limit > MaxLimit:
		problem(w, http.StatusUnprocessableEntity, "limit-exceeded", "limit", fmt.Sprintf("limit must be between 1 and %d", MaxLimit))
		return
	}
	// Another tenant's graph is indistinguishable from a missing one.
	if !claims.AllowsTenant(req.Tenant) {
		problem(w, http.StatusNotFound, "not-found", "tenant", "no tenant "+req.Tenant)
		return
	}
	var q Query
	if req.Query[0] == '"' {
		var src string
		_ = json.Unmarshal(req.Query, &src)
		q, err = Parse(src, req.Vars)
	} else {
		q, err = ParseJSON(req.Query, req.Vars)
	}
	if err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			p := httpx.NewProblem(http.StatusUnprocessableEntity, "query-syntax", err.Error())
			p.Errors = []httpx.FieldError{{Field: "query", Detail: err.Error()}}
			httpx.WriteProblem(w, p)
			return
		}
		problem(w, http.StatusUnprocessableEntity, "validation", "query", err.Error())
		return
	}
	if req.Consistency != "" {
		tenant, seq, err := events.ParseConsistencyToken(req.Consistency)
		if err != nil || tenant != req.Tenant {
			problem(w, http.StatusUnprocessableEntity, "validation", "consistency", "not a consistency token of tenant "+req.Tenant)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.cfg.ConsistencyTimeout)
		err = a.cfg.Projector.WaitApplied(ctx, tenant, seq)
		cancel()
		if err != nil {
			p := httpx.NewProblem(http.StatusGatewayTimeout, "consistency-timeout",
				fmt.Sprintf("the graph has not applied %s seq %d within %s (at seq %d); retry", tenant, seq, a.cfg.ConsistencyTimeout, a.cfg.Projector.Tenants().AppliedSeq(tenant)))
			httpx.WriteProblem(w, p)
			return
		}
	}
	g := a.cfg.Projector.Tenants().Graph(req.Tenant)
	if g == nil {
		problem(w, http.StatusNotFound, "not-found", "tenant", "no tenant "+req.Tenant)
		return
	}
	opts := a.cfg.Limits
	opts.Limit, opts.Cursor, opts.Authorizer = req.Limit, req.Cursor, a.cfg.Authorizer
	start := time.Now()
	res, err := Execute(r.Context(), g, q, opts)
	a.queryMS.WithLabelValues(string(q.Op)).Observe(float64(time.Since(start).Microseconds()) / 1000)
	if err != nil {
		var le *LimitError
		switch {
		case errors.As(err, &le):
			p := httpx.NewProblem(http.StatusUnprocessableEntity, "limit-exceeded", err.Error())
			p.Errors = []httpx.FieldError{{Field: "limits." + le.Limit, Detail: err.Error()}}
			httpx.WriteProblem(w, p)
		case errors.Is(err, ErrInvalidCursor):
			problem(w, http.StatusUnprocessableEntity, "validation", "cursor", err.Error())
		case errors.Is(err, ErrNoAuthorizer):
			problem(w, http.StatusServiceUnavailable, "unavailable", "", err.Error())
		default:
			var pe *ParseError
			if errors.As(err, &pe) {
				problem(w, http.StatusUnprocessableEntity, "query-syntax", "query", err.Error())
				return
			}
			problem(w, http.StatusInternalServerError, "internal", "", err.Error())
		}
		return
	}
	w.Header().Set("X-Graph-Applied-Seq", strconv.FormatUint(g.AppliedSeq(), 10))
	httpx.WriteJSON(w, http.StatusOK, res)
}
