package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/time/rate"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/internal/keyfile"
)

// TokenVerifier authenticates bearer tokens.
type TokenVerifier = httpx.TokenVerifier

// APIConfig configures the command API.
type APIConfig struct {
	// Producer writes to companyos.commands.v1 (required).
	Producer *kgo.Client
	// Waiter delivers the processor's replies (required).
	Waiter *Waiter
	// Index answers GET /v1/commands/{receipt_id} (required).
	Index *ReceiptIndex
	// Tokens verifies bearer tokens (required).
	Tokens TokenVerifier
	// Keys are the receipt verification keys served at /v1/keys (required).
	Keys keyfile.KeySet
	// Ready reports whether the write path can take commands (optional,
	// default always ready); while false, requests get 503.
	Ready func() bool
	// RatePerTenant is the sustained commands/s per tenant (optional,
	// default 2000); Burst its bucket size (optional, default 2×rate).
	RatePerTenant float64
	Burst         int
	// MaxInFlight bounds commands waiting for a decision (optional,
	// default 4096); beyond it requests are shed with 429.
	MaxInFlight int
	// Timeout bounds one command end to end (optional, default 10s).
	Timeout time.Duration
	// StepUp challenges high-risk actions without a fresh MFA login with
	// 401 before they are queued (optional; the policy denies them anyway).
	StepUp httpx.StepUp
	// Metrics instruments the routes (required).
	Metrics    *httpx.Metrics
	Registerer prometheus.Registerer // optional: command latency histogram
	Logger     *slog.Logger          // optional
}

// Validate reports every missing required field.
func (c APIConfig) Validate() error {
	var errs []error
	if c.Producer == nil {
		errs = append(errs, errors.New("api: producer required"))
	}
	if c.Waiter == nil {
		errs = append(errs, errors.New("api: waiter required"))
	}
	if c.Index == nil {
		errs = append(errs, errors.New("api: receipt index required"))
	}
	if c.Tokens == nil {
		errs = append(errs, errors.New("api: token verifier required"))
	}
	if len(c.Keys.Keys) == 0 {
		errs = append(errs, errors.New("api: at least one receipt key required"))
	}
	if c.Metrics == nil {
		errs = append(errs, errors.New("api: metrics required"))
	}
	return errors.Join(errs...)
}

// API serves the command API.
type API struct {
	cfg      APIConfig
	log      *slog.Logger
	inflight chan struct{}
	wg       sync.WaitGroup
	latency  *prometheus.HistogramVec

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter
}

// NewAPI validates cfg and applies defaults.
func NewAPI(cfg APIConfig) (*API, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RatePerTenant <= 0 {
		cfg.RatePerTenant = 2000
	}
	if cfg.Burst <= 0 {
		cfg.Burst = int(math.Max(1, 2*cfg.RatePerTenant))
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Ready == nil {
		cfg.Ready = func() bool { return true }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &API{cfg: cfg, log: cfg.Logger.With("component", "api"), inflight: make(chan struct{}, cfg.MaxInFlight),
		limiters: map[string]*rate.Limiter{}}
	a.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "command_duration_seconds",
		Help:    "End-to-end command latency (HTTP in to decision out), by command type and status class.",
		Buckets: []float64{.001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 10},
	}, []string{"type", "code"})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(a.latency)
	}
	return a, nil
}

// Routes are the API's route patterns, for the OpenAPI contract test.
var Routes = []string{"POST /v1/commands", "POST /v1/commands/batch", "GET /v1/commands/{receipt_id}", "GET /v1/keys", "POST /v1/policy/preflight"}

// Register mounts the routes on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.Handle("POST /v1/commands", a.cfg.Metrics.Instrument("/v1/commands", http.HandlerFunc(a.postCommand)))
	mux.Handle("POST /v1/commands/batch", a.cfg.Metrics.Instrument("/v1/commands/batch", http.HandlerFunc(a.postBatch)))
	mux.Handle("GET /v1/commands/{receipt_id}", a.cfg.Metrics.Instrument("/v1/commands/{receipt_id}", http.HandlerFunc(a.getCommand)))
	mux.Handle("GET /v1/keys", a.cfg.Metrics.Instrument("/v1/keys", http.HandlerFunc(a.getKeys)))
	mux.Handle("POST /v1/policy/preflight", a.cfg.Metrics.Instrument("/v1/policy/preflight", http.HandlerFunc(a.postPreflight)))
}

// Drain waits for in-flight commands to get their decision (or ctx to end).
func (a *API) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *API) authenticate(w http.ResponseWriter, r *http.Request) (auth.Claims, bool) {
	return httpx.Authenticate(w, r, a.cfg.Tokens)
}

var idemKeyRe = regexp.MustCompile(`^[\x21-\x7e]{1,255}$`)

func (a *API) limiter(tenant string) *rate.Limiter {
	a.limMu.Lock()
	defer a.limMu.Unlock()
	l := a.limiters[tenant]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(a.cfg.RatePerTenant), a.cfg.Burst)
		a.limiters[tenant] = l
	}
	return l
}

// precheck does what every write route checks before reading the body:
// readiness, the bearer token, the media type and the Idempotency-Key
// header (at most maxKey characters). On failure it has written the
// problem and returns its status.
func (a *API) precheck(w http.ResponseWriter, r *http.Request, maxKey int) (auth.Claims, string, int) {
	if !a.cfg.Ready() {
		w.Header().Set("Retry-After", "1")
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "not-ready", "the command path is starting up or shutting down; retry shortly"))
		return auth.Claims{}, "", http.StatusServiceUnavailable
	}
	claims, ok := a.authenticate(w, r)
	if !ok {
		return auth.Claims{}, "", http.StatusUnauthorized
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		p := httpx.NewProblem(http.StatusUnsupportedMediaType, "unsupported-media-type", "Content-Type must be application/json")
		p.Errors = []FieldError{{Field: "header.Content-Type", Detail: "must be application/json"}}
		httpx.WriteProblem(w, p)
		return auth.Claims{}, "", p.Status
	}
	idemKey := r.Header.Get("Idempotency-Key")
	if _, present := r.Header["Idempotency-Key"]; present && (!idemKeyRe.MatchString(idemKey) || len(idemKey) > maxKey) {
		detail := fmt.Sprintf("Idempotency-Key must be 1-%d visible ASCII characters", maxKey)
		p := httpx.NewProblem(http.StatusBadRequest, "validation", detail)
		p.Errors = []FieldError{{Field: "header.Idempotency-Key", Detail: detail}}
		httpx.WriteProblem(w, p)
		return auth.Claims{}, "", p.Status
	}
	return claims, idemKey, 0
}

func tooMany(w http.ResponseWriter, retryAfter time.Duration, detail string) {
	secs := int(math.Ceil(retryAfter.Seconds()))
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	httpx.WriteProblem(w, httpx.NewProblem(http.StatusTooManyRequests, "too-many-requests", detail))
}

func (a *API) postCommand(w http.ResponseWriter, r *http.Request) { a.submit(w, r, false) }

// postPreflight is POST /v1/policy/preflight: the same command body, decided
// by the processor against the same state and bundle, executed never.
func (a *API) postPreflight(w http.ResponseWriter, r *http.Request) { a.submit(w, r, true) }

func (a *API) submit(w http.ResponseWriter, r *http.Request, preflight bool) {
	start := time.Now()
	cmdType, code := "invalid", 0
	defer func() {
		a.latency.WithLabelValues(cmdType, strconv.Itoa(code/100)+"xx").Observe(time.Since(start).Seconds())
	}()
	fail := func(p *httpx.Problem) { code = p.Status; httpx.WriteProblem(w, p) }

	claims, idemKey, status := a.precheck(w, r, 255)
	if status != 0 {
		code = status
		return
	}
	select {
	case a.inflight <- struct{}{}:
		defer func() { <-a.inflight }()
	default:
		code = http.StatusTooManyRequests
		tooMany(w, time.Second, "too many commands in flight; retry after the Retry-After delay")
		return
	}
	a.wg.Add(1)
	defer a.wg.Done()

	body, err := readBody(w, r, MaxBundleBodyBytes)
	if err == nil && len(body) > MaxBodyBytes && !bytes.Contains(body, []byte(`"`+TypePolicyPublish+`"`)) {
		err = &http.MaxBytesError{Limit: MaxBodyBytes}
	}
	if err != nil {
		p := httpx.NewProblem(http.StatusRequestEntityTooLarge, "too-large", err.Error())
		p.Errors = []FieldError{{Field: "body", Detail: err.Error()}}
		if !errors.As(err, new(*http.MaxBytesError)) {
			p = httpx.NewProblem(http.StatusBadRequest, "bad-request", "reading body: "+err.Error())
		}
		fail(p)
		return
	}
	cmd, err := DecodeCommand(body)
	if err != nil {
		var ve *ValidationError
		errors.As(err, &ve)
		status := http.StatusUnprocessableEntity
		if ve != nil && len(ve.Errors) == 1 && (strings.HasPrefix(ve.Errors[0].Detail, "malformed JSON") ||
			ve.Errors[0].Field == "body") {
			status = http.StatusBadRequest
		}
		p := httpx.NewProblem(status, "validation", err.Error())
		if ve != nil {
			p.Errors = ve.Errors
		}
		fail(p)
		return
	}
	cmdType = cmd.Type
	if !claims.AllowsTenant(cmd.Tenant) {
		p := httpx.NewProblem(http.StatusForbidden, "tenant-forbidden", fmt.Sprintf("the token is not valid for tenant %q", cmd.Tenant))
		p.Errors = []FieldError{{Field: "tenant", Detail: "not among the token's tenants"}}
		fail(p)
		return
	}
	if !preflight && a.cfg.StepUp.Required(claims, cmd.Type, time.Now()) {
		code = http.StatusUnauthorized
		a.cfg.StepUp.Challenge(w, cmd.Type)
		return
	}
	if res := a.limiter(cmd.Tenant).Reserve(); !res.OK() || res.Delay() > 0 {
		d := res.Delay()
		res.Cancel()
		code = http.StatusTooManyRequests
		tooMany(w, d, fmt.Sprintf("tenant %s is over its rate limit of %.0f commands/s", cmd.Tenant, a.cfg.RatePerTenant))
		return
	}

	canonical, err := json.Marshal(cmd)
	if err != nil {
		fail(httpx.NewProblem(http.StatusInternalServerError, "internal", err.Error()))
		return
	}
	now := time.Now().UTC()
	req := Request{RequestID: RandomID("req_"), IdempotencyKey: idemKey, ReceivedAt: now, Deadline: now.Add(a.cfg.Timeout), Command: canonical,
		Principal: Principal{ID: claims.Principal, Roles: claims.Roles, MFA: claims.MFA, AuthTime: claims.AuthTime}, Preflight: preflight}
	if preflight {
		req.IdempotencyKey, idemKey = "", ""
	}
	if idemKey != "" {
		req.CommandID = CommandIDFor(cmd.Tenant, claims.Principal, idemKey)
	} else {
		req.CommandID = RandomID("cmd_")
	}
	value, _ := json.Marshal(req)

	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), a.cfg.Timeout)
	defer cancel()
	replies, unregister := a.cfg.Waiter.Register(req.RequestID)
	defer unregister()
	if err := a.cfg.Producer.ProduceSync(ctx, &kgo.Record{Topic: events.TopicCommands, Key: []byte(cmd.Tenant), Value: value}).FirstErr(); err != nil {
		a.log.Error("produce command", "err", err)
		w.Header().Set("Retry-After", "1")
		p := httpx.NewProblem(http.StatusServiceUnavailable, "unavailable", "could not append the command to Kafka; nothing was accepted; retry")
		p.CommandID = req.CommandID
		fail(p)
		return
	}
	select {
	case rep := <-replies:
		code = rep.Status
		if rep.Preflight != nil {
			httpx.WriteJSON(w, http.StatusOK, rep.Preflight)
			return
		}
		if rep.Replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		if rep.Problem != nil {
			rep.Problem.CommandID = rep.CommandID
			if rep.Problem.Instance == "" && rep.ReceiptID != "" {
				rep.Problem.Instance = "/v1/commands/" + rep.ReceiptID
			}
			httpx.WriteProblem(w, rep.Problem)
			return
		}
		w.Header().Set("Location", "/v1/commands/"+rep.ReceiptID)
		httpx.WriteJSON(w, rep.Status, CommandResponse{ReceiptID: rep.ReceiptID, CommandID: rep.CommandID, Decision: rep.Decision,
			Seq: rep.Seq, Version: rep.Version, Consistency: rep.Consistency, Replayed: rep.Replayed})
	case <-ctx.Done():
		p := httpx.NewProblem(http.StatusGatewayTimeout, "timeout",
			"the command was accepted by Kafka but no decision arrived in time; retry with the same Idempotency-Key to get its outcome")
		p.CommandID = req.CommandID
		fail(p)
	}
}

// CommandResponse is the 201 body of POST /v1/commands.
type CommandResponse struct {
	ReceiptID   string `json:"receipt_id"`
	CommandID   string `json:"command_id"`
	Decision    string `json:"decision"`
	Seq         uint64 `json:"seq"`
	Version     uint64 `json:"version,omitempty"`
	Consistency string `json:"consistency"`
	Replayed    bool   `json:"replayed,omitempty"`
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

// OutcomeResponse is the body of GET /v1/commands/{receipt_id}.
type OutcomeResponse struct {
	IndexEntry
	Consistency string          `json:"consistency"`
	Envelope    json.RawMessage `json:"envelope"`
}

var receiptIDRe = regexp.MustCompile(`^rcpt_[0-9a-f]{32}$`)

func (a *API) getCommand(w http.ResponseWriter, r *http.Request) {
	claims, ok := a.authenticate(w, r)
	if !ok {
		return
	}
	id := r.PathValue("receipt_id")
	if !receiptIDRe.MatchString(id) {
		p := httpx.NewProblem(http.StatusBadRequest, "validation", "receipt_id must look like rcpt_<32 hex digits>")
		p.Errors = []FieldError{{Field: "path.receipt_id", Detail: "must match " + receiptIDRe.String()}}
		httpx.WriteProblem(w, p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	e, found, err := a.cfg.Index.Lookup(ctx, id)
	if err != nil {
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "unavailable", "receipt index: "+err.Error()))
		return
	}
	// A receipt of another tenant is indistinguishable from a missing one.
	if !found || !claims.AllowsTenant(e.Tenant) {
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusNotFound, "not-found", "no receipt "+id))
		return
	}
	env, err := a.cfg.Index.FetchEnvelope(ctx, e)
	if err != nil {
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "unavailable", "reading the receipt from Kafka: "+err.Error()))
		return
	}
	httpx.WriteJSON(w, http.StatusOK, OutcomeResponse{IndexEntry: e, Consistency: events.ConsistencyToken(e.Tenant, e.Seq), Envelope: env})
}

func (a *API) getKeys(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.cfg.Keys)
}
