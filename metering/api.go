package metering

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
)

// Media types of POST /v1/metering/events (CloudEvents 1.0 JSON format,
// structured and batched modes). Binary mode (attributes in ce-* headers) is
// not supported.
const (
	MediaTypeEvent = "application/cloudevents+json"
	MediaTypeBatch = "application/cloudevents-batch+json"
)

// Defaults and bounds of Config.
const (
	// PermissionWrite is the token role that allows ingest.
	PermissionWrite = "metering.write"
	// MaxBatchLimit is the largest MaxBatchEvents accepted.
	MaxBatchLimit         = 1000
	DefaultMaxBodyBytes   = 4 << 20
	DefaultRecentKeys     = 1 << 18
	DefaultRecentKeysTTL  = 10 * time.Minute
	DefaultProduceTimeout = 10 * time.Second
)

// Record headers of every record on metering.events.v1 (CloudEvents Kafka
// protocol binding names); the value is the Event in structured mode.
const (
	HeaderCEID        = "ce_id"
	HeaderCESource    = "ce_source"
	HeaderCEType      = "ce_type"
	HeaderContentType = "content-type"
)

// Config configures the ingest API.
type Config struct {
	// Producer writes to metering.events.v1 (required). It should key-hash
	// records (kgo's default partitioner does) so a tenant stays on one
	// partition.
	Producer *kgo.Client
	// Tokens verifies bearer tokens (required).
	Tokens httpx.TokenVerifier
	// Metrics instruments the route (required).
	Metrics *httpx.Metrics
	// Registerer receives metering_events_total{result} (optional; without
	// it the counter is kept but not exported).
	Registerer prometheus.Registerer
	// WriteRoles are the token roles that may ingest; a token needs one of
	// them (optional, default PermissionWrite and "admin", the role the
	// policy lets do everything).
	WriteRoles []string
	// MaxBatchEvents bounds a batch (optional, default and maximum
	// MaxBatchLimit = 1000); a larger batch is refused with 422.
	MaxBatchEvents int
	// MaxBodyBytes bounds a request body (optional, default 4 MiB); a larger
	// body is refused with 413. One event is at most MaxEventBytes.
	MaxBodyBytes int64
	// MaxFutureSkew is how far in the future an event's time may be
	// (optional, default 5m).
	MaxFutureSkew time.Duration
	// RecentKeys is how many acknowledged (tenant, source, id) keys are
	// remembered to answer retries without producing again (optional,
	// default 262144; negative disables), each for RecentKeysTTL (optional,
	// default 10m).
	RecentKeys    int
	RecentKeysTTL time.Duration
	// Timeout bounds waiting for Kafka's acknowledgement (optional, default
	// 10s); past it the request gets 503.
	Timeout time.Duration
	// Ready reports whether ingest may take requests (optional, default
	// always); while false, requests get 503.
	Ready func() bool
	// Logger (optional, default slog.Default()) and Now (optional, the
	// clock, default time.Now).
	Logger *slog.Logger
	Now    func() time.Time
}

// Validate reports every missing or out-of-range field.
func (c Config) Validate() error {
	var errs []error
	if c.Producer == nil {
		errs = append(errs, errors.New("metering: config: producer required"))
	}
	if c.Tokens == nil {
		errs = append(errs, errors.New("metering: config: token verifier required"))
	}
	if c.Metrics == nil {
		errs = append(errs, errors.New("metering: config: metrics required"))
	}
	if c.MaxBatchEvents < 0 || c.MaxBatchEvents > MaxBatchLimit {
		errs = append(errs, fmt.Errorf("metering: config: max batch events %d outside [1, %d] (0 = default)", c.MaxBatchEvents, MaxBatchLimit))
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("metering: config: max body bytes %d is negative", c.MaxBodyBytes))
	}
	if c.MaxFutureSkew < 0 {
		errs = append(errs, fmt.Errorf("metering: config: max future skew %s is negative", c.MaxFutureSkew))
	}
	if c.RecentKeysTTL < 0 || c.Timeout < 0 {
		errs = append(errs, errors.New("metering: config: durations must not be negative"))
	}
	for i, r := range c.WriteRoles {
		if r == "" {
			errs = append(errs, fmt.Errorf("metering: config: write role %d is empty", i))
		}
	}
	return errors.Join(errs...)
}

// API serves POST /v1/metering/events.
type API struct {
	cfg       Config
	log       *slog.Logger
	validator Validator
	hasher    keyHasher
	recent    *recentKeys

	accepted, rejected, duplicate prometheus.Counter
}

// NewAPI validates cfg, applies defaults and registers the metrics.
func NewAPI(cfg Config) (*API, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.WriteRoles) == 0 {
		cfg.WriteRoles = []string{PermissionWrite, "admin"}
	}
	if cfg.MaxBatchEvents == 0 {
		cfg.MaxBatchEvents = MaxBatchLimit
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxFutureSkew == 0 {
		cfg.MaxFutureSkew = DefaultFutureSkew
	}
	if cfg.RecentKeys == 0 {
		cfg.RecentKeys = DefaultRecentKeys
	}
	if cfg.RecentKeysTTL == 0 {
		cfg.RecentKeysTTL = DefaultRecentKeysTTL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultProduceTimeout
	}
	if cfg.Ready == nil {
		cfg.Ready = func() bool { return true }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &API{cfg: cfg, log: cfg.Logger.With("component", "metering-api"),
		validator: Validator{MaxFutureSkew: cfg.MaxFutureSkew, Now: cfg.Now},
		hasher:    newKeyHasher(),
		recent:    newRecentKeys(cfg.RecentKeys, cfg.RecentKeysTTL)}
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metering_events_total",
		Help: "Metering events received: accepted (acknowledged by Kafka), rejected (invalid or forbidden) or duplicate (already acknowledged; not produced again).",
	}, []string{"result"})
	a.accepted, a.rejected, a.duplicate = total.WithLabelValues("accepted"), total.WithLabelValues("rejected"), total.WithLabelValues("duplicate")
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(total); err != nil {
			return nil, fmt.Errorf("metering: register metrics: %w", err)
		}
	}
	return a, nil
}

// Routes are the API's routes, for the OpenAPI contract test.
var Routes = []string{"POST /v1/metering/events"}

// Register mounts the route on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.Handle(Routes[0], a.cfg.Metrics.Instrument("/v1/metering/events", http.HandlerFunc(a.postEvents)))
}

// AcceptedItem is an event Kafka has acknowledged, now or earlier.
type AcceptedItem struct {
	Index int    `json:"index"`
	ID    string `json:"id"`
	// Duplicate: the same (source, id) was acknowledged earlier (in this
	// request or a recent one) and was not produced again.
	Duplicate bool `json:"duplicate,omitempty"`
}

// RejectedItem is an event that was not accepted, as a problem-detail-like
// object: Status is what a request with this event alone would have got
// (422 invalid, 403 tenant not allowed by the token, 400/413 malformed).
type RejectedItem struct {
	Index  int          `json:"index"`
	ID     string       `json:"id,omitempty"`
	Type   string       `json:"type"`
	Status int          `json:"status"`
	Detail string       `json:"detail"`
	Errors []FieldError `json:"errors"`
}

// IngestResponse is the 202 body: every event of the request is in exactly
// one of the lists.
type IngestResponse struct {
	Accepted []AcceptedItem `json:"accepted"`
	Rejected []RejectedItem `json:"rejected"`
}

// batchProblem is the 422/403 problem of a batch with no valid event; it
// carries the per-item rejections as an extension member.
type batchProblem struct {
	*httpx.Problem
	Rejected []RejectedItem `json:"rejected"`
}

func (a *API) mayWrite(c auth.Claims) bool {
	for _, r := range c.Roles {
		if slices.Contains(a.cfg.WriteRoles, r) {
			return true
		}
	}
	return false
}

// postEvents ingests one event or a batch.
//
// Partial batches: each event is validated on its own. Valid events are
// produced and the answer is 202 with the accepted and the rejected ones
// listed (the per-item outcomes that a 207 would carry); only when no event
// is valid is the answer 422 (403 when every event names a tenant the token
// may not write). A single event is answered 202, 422, 400 or 403 as a whole.
// 202 is sent only after Kafka acknowledged every accepted event; if any
// produce fails the answer is 503 and no event is reported accepted (a retry
// is safe: events are idempotent by (source, id)).
func (a *API) postEvents(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.Ready() {
		w.Header().Set("Retry-After", "1")
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "not-ready", "metering ingest is starting up or shutting down; retry shortly"))
		return
	}
	claims, ok := httpx.Authenticate(w, r, a.cfg.Tokens)
	if !ok {
		return
	}
	if !a.mayWrite(claims) {
		p := httpx.NewProblem(http.StatusForbidden, "forbidden", fmt.Sprintf("the token lacks the %s permission (one of the roles %s)", PermissionWrite, strings.Join(a.cfg.WriteRoles, ", ")))
		p.Errors = []FieldError{{Field: "header.Authorization", Detail: "token roles do not include " + PermissionWrite}}
		httpx.WriteProblem(w, p)
		return
	}
	batchMode, ok := requestMode(w, r)
	if !ok {
		return
	}
	body, err := readBody(w, r, a.cfg.MaxBodyBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			p := httpx.NewProblem(http.StatusRequestEntityTooLarge, "too-large", fmt.Sprintf("the body is larger than %d bytes", a.cfg.MaxBodyBytes))
			p.Errors = []FieldError{{Field: "body", Detail: fmt.Sprintf("at most %d bytes", a.cfg.MaxBodyBytes)}}
			httpx.WriteProblem(w, p)
			return
		}
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusBadRequest, "bad-request", "reading body: "+err.Error()))
		return
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	isArray := len(trimmed) > 0 && trimmed[0] == '['
	switch {
	case batchMode == modeBatch && !isArray:
		badBody(w, "a "+MediaTypeBatch+" body must be a JSON array of CloudEvents")
		return
	case batchMode == modeSingle && isArray:
		badBody(w, "a batch (JSON array) must be sent as "+MediaTypeBatch)
		return
	case isArray:
		a.ingestBatch(w, r, claims, body)
	default:
		a.ingestSingle(w, r, claims, body)
	}
}

// readBody reads at most limit bytes, sized by Content-Length when known.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 && n <= limit {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	return buf.Bytes(), err
}

type mode int

const (
	modeEither mode = iota // application/json or no Content-Type: decided by the body
	modeSingle
	modeBatch
)

func requestMode(w http.ResponseWriter, r *http.Request) (mode, bool) {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return modeEither, true
	}
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case err != nil:
	case mt == MediaTypeEvent:
		return modeSingle, true
	case mt == MediaTypeBatch:
		return modeBatch, true
	case mt == jsonContentType:
		return modeEither, true
	}
	detail := fmt.Sprintf("Content-Type must be %s, %s or %s", MediaTypeEvent, MediaTypeBatch, jsonContentType)
	p := httpx.NewProblem(http.StatusUnsupportedMediaType, "unsupported-media-type", detail)
	p.Errors = []FieldError{{Field: "header.Content-Type", Detail: detail}}
	httpx.WriteProblem(w, p)
	return 0, false
}

func badBody(w http.ResponseWriter, detail string) {
	p := httpx.NewProblem(http.StatusBadRequest, "validation", detail)
	p.Errors = []FieldError{{Field: "body", Detail: detail}}
	httpx.WriteProblem(w, p)
}

// item is one event of the request on its way to Kafka.
type item struct {
	index int
	event Event
	key   keyHash
	dupOf int // index of the first occurrence of its key in the request, or -1
}

func (a *API) ingestSingle(w http.ResponseWriter, r *http.Request, claims auth.Claims, body []byte) {
	var e Event
	var rej *RejectedItem
	if len(body) > MaxEventBytes {
		ve := &ValidationError{Malformed: true}
		ve.add("body", "the event is %d bytes, more than %d", len(body), MaxEventBytes)
		rej = rejection(0, "", ve, len(body))
	} else {
		s := &scanner{buf: body}
		var err error
		e, rej, err = a.decode(s, 0, claims)
		if err == nil && !s.atEnd() {
			err = s.fail("data after the event")
		}
		if err != nil {
			badBody(w, err.Error())
			return
		}
	}
	if rej != nil {
		a.rejected.Inc()
		p := httpx.NewProblem(rej.Status, strings.TrimPrefix(rej.Type, httpx.ProblemBase), rej.Detail)
		p.Errors = rej.Errors
		httpx.WriteProblem(w, p)
		return
	}
	a.ingest(w, r, []item{{index: 0, event: e, key: a.hasher.sum(e), dupOf: -1}}, nil)
}

// ingestBatch reads the array in one pass. Malformed JSON anywhere rejects
// the request (400); each well-formed element is validated on its own.
func (a *API) ingestBatch(w http.ResponseWriter, r *http.Request, claims auth.Claims, body []byte) {
	s := &scanner{buf: body}
	if err := s.expect('['); err != nil {
		badBody(w, err.Error())
		return
	}
	var items []item
	var rejected []RejectedItem
	first := map[keyHash]int{}
	n := 0
	if s.peek() == ']' {
		s.pos++
	} else {
		for {
			if n == a.cfg.MaxBatchEvents {
				tooManyEvents(w, a.cfg.MaxBatchEvents, fmt.Sprintf("more than %d", n))
				return
			}
			e, rej, err := a.decode(s, n, claims)
			if err != nil {
				badBody(w, err.Error())
				return
			}
			if rej != nil {
				rejected = append(rejected, *rej)
			} else {
				it := item{index: n, event: e, key: a.hasher.sum(e), dupOf: -1}
				if j, seen := first[it.key]; seen {
					it.dupOf = j
				} else {
					first[it.key] = n
				}
				items = append(items, it)
			}
			n++
			done, err := s.next(']')
			if err != nil {
				badBody(w, err.Error())
				return
			}
			if done {
				break
			}
		}
	}
	if !s.atEnd() {
		badBody(w, s.fail("data after the array").Error())
		return
	}
	if n == 0 {
		tooManyEvents(w, a.cfg.MaxBatchEvents, "0")
		return
	}
	a.rejected.Add(float64(len(rejected)))
	if len(items) == 0 {
		status, kind := http.StatusForbidden, "tenant-forbidden"
		var errs []FieldError
		for _, rj := range rejected {
			if rj.Status != http.StatusForbidden {
				status, kind = http.StatusUnprocessableEntity, "validation"
			}
			for _, fe := range rj.Errors {
				errs = append(errs, FieldError{Field: "[" + strconv.Itoa(rj.Index) + "]." + fe.Field, Detail: fe.Detail})
			}
		}
		p := httpx.NewProblem(status, kind, fmt.Sprintf("none of the %d events was accepted; nothing was produced", n))
		p.Errors = errs
		writeProblemWith(w, batchProblem{Problem: p, Rejected: rejected})
		return
	}
	a.ingest(w, r, items, rejected)
}

func tooManyEvents(w http.ResponseWriter, max int, got string) {
	detail := fmt.Sprintf("a batch holds 1 to %d events, got %s", max, got)
	p := httpx.NewProblem(http.StatusUnprocessableEntity, "validation", detail)
	p.Errors = []FieldError{{Field: "body", Detail: detail}}
	httpx.WriteProblem(w, p)
}

// decode reads the event at s, validates it and checks the token may
// write its tenant. A non-nil error is malformed JSON.
func (a *API) decode(s *scanner, index int, claims auth.Claims) (Event, *RejectedItem, error) {
	s.ws()
	start := s.pos
	e, id, ve, err := a.validator.decodeValue(s)
	if err != nil {
		return Event{}, nil, err
	}
	if size := s.pos - start; size > MaxEventBytes {
		ve = &ValidationError{Malformed: true}
		ve.add("body", "the event is %d bytes, more than %d", size, MaxEventBytes)
		return Event{}, rejection(index, id, ve, size), nil
	}
	if ve != nil {
		return Event{}, rejection(index, id, ve, 0), nil
	}
	if !claims.AllowsTenant(e.Subject) {
		return Event{}, &RejectedItem{Index: index, ID: e.ID, Type: httpx.ProblemBase + "tenant-forbidden", Status: http.StatusForbidden,
			Detail: fmt.Sprintf("the token is not valid for tenant %q", e.Subject),
			Errors: []FieldError{{Field: "subject", Detail: "not among the token's tenants"}}}, nil
	}
	return e, nil, nil
}

// rejection describes an invalid event; size > MaxEventBytes means 413.
func rejection(index int, id string, ve *ValidationError, size int) *RejectedItem {
	rej := &RejectedItem{Index: index, ID: id, Type: httpx.ProblemBase + "validation", Status: http.StatusUnprocessableEntity, Errors: ve.Errors}
	switch {
	case size > MaxEventBytes:
		rej.Type, rej.Status = httpx.ProblemBase+"too-large", http.StatusRequestEntityTooLarge
	case ve.Malformed:
		rej.Status = http.StatusBadRequest
	}
	rej.Detail = fmt.Sprintf("%d invalid field(s)", len(ve.Errors))
	if len(ve.Errors) == 1 {
		rej.Detail = ve.Errors[0].Field + ": " + ve.Errors[0].Detail
	}
	return rej
}

// Record is the Kafka record of an accepted event: keyed by tenant, the
// Event as JSON (structured mode), with ce_id, ce_source, ce_type and
// content-type headers.
func Record(e Event) *kgo.Record {
	value := appendEvent(make([]byte, 0, 320), e)
	return &kgo.Record{Topic: events.TopicMetering, Key: []byte(e.Subject), Value: value, Headers: []kgo.RecordHeader{
		{Key: HeaderCEID, Value: []byte(e.ID)},
		{Key: HeaderCESource, Value: []byte(e.Source)},
		{Key: HeaderCEType, Value: []byte(e.Type)},
		{Key: HeaderContentType, Value: []byte(MediaTypeEvent)},
	}}
}

// ingest produces the items not already acknowledged and answers.
func (a *API) ingest(w http.ResponseWriter, r *http.Request, items []item, rejected []RejectedItem) {
	now := a.cfg.Now()
	resp := IngestResponse{Accepted: make([]AcceptedItem, len(items)), Rejected: rejected}
	if resp.Rejected == nil {
		resp.Rejected = []RejectedItem{}
	}
	var records []*kgo.Record
	var produced []int // positions in items of the records
	dups := 0
	for k, it := range items {
		resp.Accepted[k] = AcceptedItem{Index: it.index, ID: it.event.ID}
		if it.dupOf >= 0 || a.recent.contains(it.key, now) {
			resp.Accepted[k].Duplicate = true
			dups++
			continue
		}
		records = append(records, Record(it.event))
		produced = append(produced, k)
	}
	if len(records) > 0 {
		keys := make([]keyHash, len(produced))
		for i, k := range produced {
			keys[i] = items[k].key
		}
		if failed, err := a.produce(r.Context(), records, keys, now); err != nil {
			a.log.Error("produce metering events", "failed", failed, "of", len(records), "err", err)
			w.Header().Set("Retry-After", "1")
			p := httpx.NewProblem(http.StatusServiceUnavailable, "unavailable", fmt.Sprintf(
				"Kafka did not acknowledge %d of %d events (%v); none is reported accepted; retrying the same request is safe (events are idempotent by source and id)",
				failed, len(records), err))
			httpx.WriteProblem(w, p)
			return
		}
	}
	a.accepted.Add(float64(len(records)))
	a.duplicate.Add(float64(dups))
	httpx.WriteJSON(w, http.StatusAccepted, resp)
}

// produce sends records and waits, at most cfg.Timeout, until Kafka has
// acknowledged or failed each. It returns how many were not acknowledged
// and the first error. Every acknowledged record's key joins the recent-keys
// cache, also when the acknowledgement comes after the wait gave up, so a
// retry skips what did land. The wait does not rely on the client failing
// buffered records when the context ends (franz-go keeps a record whose
// request may have reached the broker): the answer is 503 on time either way.
func (a *API) produce(reqCtx context.Context, records []*kgo.Record, keys []keyHash, now time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), a.cfg.Timeout)
	defer cancel()
	var (
		mu       sync.Mutex
		pending  = len(records)
		failed   int
		firstErr error
		done     = make(chan struct{})
	)
	for i, rec := range records {
		key := keys[i]
		a.cfg.Producer.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			if err == nil {
				a.recent.add(key, now)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
			if pending--; pending == 0 {
				close(done)
			}
		})
	}
	select {
	case <-done:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		if pending > 0 {
			return pending + failed, fmt.Errorf("metering: produce: no acknowledgement within %s", a.cfg.Timeout)
		}
	}
	if failed > 0 {
		return failed, fmt.Errorf("metering: produce: %w", firstErr)
	}
	return 0, nil
}

func writeProblemWith(w http.ResponseWriter, p batchProblem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}
