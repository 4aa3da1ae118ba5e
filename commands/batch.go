package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
)

// Batch limits. A batch is a convenience for bulk loads (fixtures,
// migrations): every item is still its own command with its own receipt.
const (
	MaxBatchItems = 1000
	MaxBatchBytes = 8 << 20
)

// BatchRequest is the body of POST /v1/commands/batch.
type BatchRequest struct {
	Commands []json.RawMessage `json:"commands"`
}

// BatchItemResult is one command's outcome in a batch response.
type BatchItemResult struct {
	Status      int            `json:"status"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	CommandID   string         `json:"command_id"`
	Decision    string         `json:"decision,omitempty"`
	Seq         uint64         `json:"seq,omitempty"`
	Version     uint64         `json:"version,omitempty"`
	Consistency string         `json:"consistency,omitempty"`
	Replayed    bool           `json:"replayed,omitempty"`
	Problem     *httpx.Problem `json:"problem,omitempty"`
}

// BatchResponse is the 200 body of POST /v1/commands/batch.
type BatchResponse struct {
	Results []BatchItemResult `json:"results"`
	Allowed int               `json:"allowed"`
	Denied  int               `json:"denied"`
	Failed  int               `json:"failed"`
}

// postBatch accepts up to MaxBatchItems commands. The whole batch is
// validated first: one invalid item rejects the batch (422, each bad field
// named commands[i].…) and nothing is appended. Valid batches are produced in
// order (per tenant, order is preserved end to end) and answered when every
// item has its outcome. With an Idempotency-Key header K, item i uses the key
// K/i, so a retried batch replays instead of re-applying.
func (a *API) postBatch(w http.ResponseWriter, r *http.Request) {
	// Item i uses the key K/i, so the batch key leaves room for the suffix.
	claims, idemKey, status := a.precheck(w, r, 240)
	if status != 0 {
		return
	}
	body, err := readBody(w, r, MaxBatchBytes)
	if err != nil {
		p := httpx.NewProblem(http.StatusRequestEntityTooLarge, "too-large", err.Error())
		if !errors.As(err, new(*http.MaxBytesError)) {
			p = httpx.NewProblem(http.StatusBadRequest, "bad-request", "reading body: "+err.Error())
		}
		httpx.WriteProblem(w, p)
		return
	}
	var br BatchRequest
	if err := strictUnmarshal(body, &br); err != nil {
		fe := jsonFieldError("", err)
		p := httpx.NewProblem(http.StatusBadRequest, "validation", fe.Field+": "+fe.Detail)
		p.Errors = []FieldError{fe}
		httpx.WriteProblem(w, p)
		return
	}
	if len(br.Commands) == 0 || len(br.Commands) > MaxBatchItems {
		p := httpx.NewProblem(http.StatusUnprocessableEntity, "validation", fmt.Sprintf("commands: want 1 to %d items, got %d", MaxBatchItems, len(br.Commands)))
		p.Errors = []FieldError{{Field: "commands", Detail: fmt.Sprintf("want 1 to %d items", MaxBatchItems)}}
		httpx.WriteProblem(w, p)
		return
	}
	cmds := make([]Command, len(br.Commands))
	var fieldErrs []FieldError
	perTenant := map[string]int{}
	for i, raw := range br.Commands {
		prefix := "commands[" + strconv.Itoa(i) + "]"
		c, err := DecodeCommand(raw)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				for _, fe := range ve.Errors {
					f := prefix
					if fe.Field != "" && fe.Field != "body" {
						f += "." + fe.Field
					}
					fieldErrs = append(fieldErrs, FieldError{Field: f, Detail: fe.Detail})
				}
			}
			continue
		}
		if !claims.AllowsTenant(c.Tenant) {
			fieldErrs = append(fieldErrs, FieldError{Field: prefix + ".tenant", Detail: "not among the token's tenants"})
			continue
		}
		cmds[i] = c
		perTenant[c.Tenant]++
	}
	for _, c := range cmds {
		if a.cfg.StepUp.Required(claims, c.Type, time.Now()) {
			a.cfg.StepUp.Challenge(w, c.Type)
			return
		}
	}
	if len(fieldErrs) > 0 {
		p := httpx.NewProblem(http.StatusUnprocessableEntity, "validation", fmt.Sprintf("%d invalid field(s); nothing was submitted", len(fieldErrs)))
		p.Errors = fieldErrs
		httpx.WriteProblem(w, p)
		return
	}
	for tenant, n := range perTenant {
		res := a.limiter(tenant).ReserveN(time.Now(), n)
		if !res.OK() || res.Delay() > 0 {
			d := res.Delay()
			if !res.OK() {
				d = time.Second
			}
			res.Cancel()
			tooMany(w, d, fmt.Sprintf("tenant %s: a batch of %d is over its rate limit of %.0f commands/s (burst %d)", tenant, n, a.cfg.RatePerTenant, a.cfg.Burst))
			return
		}
	}
	// The batch occupies as many in-flight slots as it has items.
	acquired := 0
	defer func() {
		for ; acquired > 0; acquired-- {
			<-a.inflight
		}
	}()
	for range cmds {
		select {
		case a.inflight <- struct{}{}:
			acquired++
		default:
			tooMany(w, time.Second, "too many commands in flight; retry after the Retry-After delay")
			return
		}
	}
	a.wg.Add(1)
	defer a.wg.Done()

	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), a.cfg.Timeout)
	defer cancel()
	principal := Principal{ID: claims.Principal, Roles: claims.Roles, MFA: claims.MFA, AuthTime: claims.AuthTime}
	reqs := make([]Request, len(cmds))
	chans := make([]<-chan Reply, len(cmds))
	records := make([]*kgo.Record, len(cmds))
	now := time.Now().UTC()
	for i, c := range cmds {
		canonical, _ := json.Marshal(c)
		req := Request{RequestID: RandomID("req_"), ReceivedAt: now, Deadline: now.Add(a.cfg.Timeout), Command: canonical, Principal: principal}
		if idemKey != "" {
			req.IdempotencyKey = idemKey + "/" + strconv.Itoa(i)
			req.CommandID = CommandIDFor(c.Tenant, claims.Principal, req.IdempotencyKey)
		} else {
			req.CommandID = RandomID("cmd_")
		}
		reqs[i] = req
		ch, unregister := a.cfg.Waiter.Register(req.RequestID)
		defer unregister()
		chans[i] = ch
		value, _ := json.Marshal(req)
		records[i] = &kgo.Record{Topic: events.TopicCommands, Key: []byte(c.Tenant), Value: value}
	}
	if err := a.cfg.Producer.ProduceSync(ctx, records...).FirstErr(); err != nil {
		a.log.Error("produce batch", "err", err)
		w.Header().Set("Retry-After", "1")
		httpx.WriteProblem(w, httpx.NewProblem(http.StatusServiceUnavailable, "unavailable",
			"could not append the batch to Kafka; some items may have been accepted: retry with the same Idempotency-Key"))
		return
	}
	resp := BatchResponse{Results: make([]BatchItemResult, len(cmds))}
	for i, ch := range chans {
		select {
		case rep := <-ch:
			item := BatchItemResult{Status: rep.Status, ReceiptID: rep.ReceiptID, CommandID: rep.CommandID, Decision: rep.Decision,
				Seq: rep.Seq, Version: rep.Version, Consistency: rep.Consistency, Replayed: rep.Replayed, Problem: rep.Problem}
			switch {
			case rep.Decision == events.DecisionAllow:
				resp.Allowed++
			case rep.Decision == events.DecisionDeny:
				resp.Denied++
			default:
				resp.Failed++
			}
			resp.Results[i] = item
		case <-ctx.Done():
			p := httpx.NewProblem(http.StatusGatewayTimeout, "timeout",
				fmt.Sprintf("the batch was accepted by Kafka but item %d had no decision in time; retry with the same Idempotency-Key to get every outcome", i))
			httpx.WriteProblem(w, p)
			return
		}
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}
