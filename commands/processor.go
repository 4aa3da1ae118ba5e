package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/httpx"
	"github.com/companyos/companyos/policy"
)

// Decider is the policy engine as the processor uses it.
type Decider interface {
	Decide(ctx context.Context, in policy.Input) policy.Decision
	Version() string
}

// ProcessorConfig configures the processor.
type ProcessorConfig struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// InstanceID names this processor (required). It is the static group
	// member id, so a restarted instance takes over its partitions at once.
	InstanceID string
	// TransactionalID (optional, default "companyos-processor-"+InstanceID).
	// A stable id lets a restarted instance fence its previous incarnation
	// on a real cluster. The embedded broker dies with the process, so dev
	// mode uses a fresh id per start (the embedded broker mishandles a
	// producer id reused across a crash).
	TransactionalID string
	// Group is the consumer group (optional, default "companyos-processor").
	Group string
	// Signer signs receipts (required).
	Signer *events.Signer
	// Policy decides commands (required).
	Policy Decider
	// Logger (optional, default slog.Default()).
	Logger *slog.Logger
	// Registerer for processor metrics (optional).
	Registerer prometheus.Registerer
	// MaxPollRecords bounds one transaction (optional, default 1000).
	MaxPollRecords int
	// Now is the clock (optional, for tests).
	Now func() time.Time
	// SubjectKeys seals selective attribute values (optional; without it a
	// command with selective attributes is refused with 422).
	SubjectKeys SubjectKeys
	// SelectiveAttrs are attribute names always treated as selective, e.g.
	// "email" (optional, default none; commands may name more).
	SelectiveAttrs []string
	// ValidatePrice checks a pricing.set against the price catalog's rules
	// (meter units, whole-hour effective_from; projections/cogs owns them),
	// so a price the catalog could not apply is refused with 422 instead of
	// receipted (optional).
	ValidatePrice func(PricingSet) error
}

// Validate reports every missing required field.
func (c ProcessorConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("processor: brokers required"))
	}
	if c.InstanceID == "" {
		errs = append(errs, errors.New("processor: instance id required"))
	}
	if c.Signer == nil {
		errs = append(errs, errors.New("processor: signer required"))
	}
	if c.Policy == nil {
		errs = append(errs, errors.New("processor: policy required"))
	}
	return errors.Join(errs...)
}

// Processor consumes companyos.commands.v1 in a consumer group and, for each
// owned partition, is the single writer of its tenants' receipts. Each poll
// is one Kafka transaction: the receipts, the replies and the consumed
// offsets commit together or not at all, and command ids already receipted
// are answered from state instead of being receipted twice.
type Processor struct {
	cfg     ProcessorConfig
	log     *slog.Logger
	metrics processorMetrics

	mu    sync.Mutex
	parts map[int32]*partitionState // owned partitions

	ready atomic.Bool
}

type partitionState struct {
	loaded  bool
	tenants map[string]*TenantState
}

type processorMetrics struct {
	receipts *prometheus.CounterVec
	lag      prometheus.Gauge
	decide   prometheus.Histogram
	txns     *prometheus.CounterVec
	expired  prometheus.Counter
}

// NewProcessor validates cfg and returns a processor; Run starts it.
func NewProcessor(cfg ProcessorConfig) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Group == "" {
		cfg.Group = "companyos-processor"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPollRecords <= 0 {
		cfg.MaxPollRecords = 1000
	}
	if cfg.TransactionalID == "" {
		cfg.TransactionalID = "companyos-processor-" + cfg.InstanceID
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Processor{cfg: cfg, log: cfg.Logger.With("component", "processor"), parts: map[int32]*partitionState{}}
	p.metrics = processorMetrics{
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provenance_receipts_total", Help: "Receipts committed to companyos.events.v1, by decision.",
		}, []string{"decision"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "processor_lag_records", Help: "Commands in owned partitions not yet processed (high watermark minus position).",
		}),
		decide: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "processor_decide_seconds", Help: "Time to decide and sign one command.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05},
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "processor_expired_commands_total", Help: "Commands skipped because their request deadline passed before a decision (nothing appended).",
		}),
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "processor_transactions_total", Help: "Processor transactions by result (committed, aborted).",
		}, []string{"result"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.metrics.receipts, p.metrics.lag, p.metrics.decide, p.metrics.txns, p.metrics.expired)
	}
	for _, d := range []string{events.DecisionAllow, events.DecisionDeny} {
		p.metrics.receipts.WithLabelValues(d)
	}
	return p, nil
}

// Ready reports whether the processor has joined its group.
func (p *Processor) Ready() bool { return p.ready.Load() }

func (p *Processor) assigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, part := range m[events.TopicCommands] {
		p.parts[part] = &partitionState{}
	}
	p.log.Info("partitions assigned", "partitions", m[events.TopicCommands])
}

func (p *Processor) revoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, part := range m[events.TopicCommands] {
		delete(p.parts, part)
	}
	if len(m[events.TopicCommands]) > 0 {
		p.log.Info("partitions revoked", "partitions", m[events.TopicCommands])
	}
}

// Run processes commands until ctx is done. A broken hash chain in the log
// is fatal: it is returned, never skipped.
func (p *Processor) Run(ctx context.Context) error {
	sess, err := kgo.NewGroupTransactSession(
		kgo.SeedBrokers(p.cfg.Brokers...),
		kgo.ConsumerGroup(p.cfg.Group),
		kgo.ConsumeTopics(events.TopicCommands),
		kgo.InstanceID(p.cfg.InstanceID),
		kgo.TransactionalID(p.cfg.TransactionalID),
		kgo.TransactionTimeout(30*time.Second),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.FetchMaxWait(250*time.Millisecond),
		kgo.SessionTimeout(10*time.Second),
		kgo.OnPartitionsAssigned(p.assigned),
		kgo.OnPartitionsRevoked(p.revoked),
		kgo.OnPartitionsLost(p.revoked),
	)
	if err != nil {
		return fmt.Errorf("processor: client: %w", err)
	}
	defer sess.Close()
	p.ready.Store(true)
	defer p.ready.Store(false)

	for {
		fetches := sess.PollRecords(ctx, p.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(t string, part int32, err error) {
			p.log.Warn("fetch error", "topic", t, "partition", part, "err", err)
		})
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := p.processBatch(ctx, sess, fetches); err != nil {
			return err
		}
	}
}

// processBatch decides every polled command in one transaction.
func (p *Processor) processBatch(ctx context.Context, sess *kgo.GroupTransactSession, fetches kgo.Fetches) error {
	if err := sess.Begin(); err != nil {
		return fmt.Errorf("processor: begin transaction: %w", err)
	}
	var (
		produceErr atomic.Value
		wg         sync.WaitGroup
		decided    = map[string]int{}
		touched    = map[int32]bool{}
		fatal      error
		lag        int64
	)
	produce := func(r *kgo.Record) {
		wg.Add(1)
		sess.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				produceErr.CompareAndSwap(nil, err)
			}
			wg.Done()
		})
	}
	// Partitions are independent (each owns its tenants' state), so they
	// are decided in parallel; within a partition, strictly in order.
	var (
		mu   sync.Mutex
		pwg  sync.WaitGroup
		sema = make(chan struct{}, runtime.GOMAXPROCS(0))
	)
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) == 0 {
			return
		}
		pwg.Add(1)
		sema <- struct{}{}
		go func() {
			defer func() { <-sema; pwg.Done() }()
			ps, err := p.partition(ctx, fp.Partition)
			if err != nil {
				mu.Lock()
				if fatal == nil {
					fatal = err
				}
				mu.Unlock()
				return
			}
			local := map[string]int{}
			for _, rec := range fp.Records {
				if d := p.handle(ctx, ps, rec, produce); d != "" {
					local[d]++
				}
			}
			mu.Lock()
			touched[fp.Partition] = true
			for d, n := range local {
				decided[d] += n
			}
			lag += fp.HighWatermark - (fp.Records[len(fp.Records)-1].Offset + 1)
			mu.Unlock()
		}()
	})
	pwg.Wait()
	wg.Wait()
	end := kgo.TryCommit
	if fatal != nil || produceErr.Load() != nil {
		end = kgo.TryAbort
	}
	// Finish the transaction even while shutting down: aborting here would
	// only make the next owner redo the same work.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	committed, err := sess.End(endCtx, end)
	if fatal != nil {
		return fatal
	}
	if !committed || err != nil {
		p.metrics.txns.WithLabelValues("aborted").Inc()
		p.log.Warn("transaction aborted; reloading partition state", "err", err, "produce_err", produceErr.Load())
		p.mu.Lock()
		for part := range touched {
			if ps := p.parts[part]; ps != nil {
				ps.loaded = false
			}
		}
		p.mu.Unlock()
		return nil
	}
	p.metrics.txns.WithLabelValues("committed").Inc()
	for d, n := range decided {
		p.metrics.receipts.WithLabelValues(d).Add(float64(n))
	}
	p.metrics.lag.Set(float64(lag))
	return nil
}

// partition returns the loaded state of an owned partition, loading it from
// companyos.events.v1 when needed.
func (p *Processor) partition(ctx context.Context, part int32) (*partitionState, error) {
	p.mu.Lock()
	ps := p.parts[part]
	if ps == nil { // polled before the assignment callback ran
		ps = &partitionState{}
		p.parts[part] = ps
	}
	p.mu.Unlock()
	if ps.loaded {
		return ps, nil
	}
	start := time.Now()
	tenants, n, err := LoadPartition(ctx, p.cfg.Brokers, part, nil)
	if err != nil {
		return nil, fmt.Errorf("processor: load partition %d: %w", part, err)
	}
	ps.tenants = tenants
	ps.loaded = true
	p.log.Info("partition state loaded", "partition", part, "receipts", n, "tenants", len(tenants), "took", time.Since(start).Round(time.Millisecond))
	return ps, nil
}

// handle decides one command record and queues its receipt and reply. It
// returns the decision when a receipt was appended.
func (p *Processor) handle(ctx context.Context, ps *partitionState, rec *kgo.Record, produce func(*kgo.Record)) string {
	var req Request
	if err := json.Unmarshal(rec.Value, &req); err != nil || req.RequestID == "" || req.CommandID == "" {
		// Nobody can be answered; keep the record for inspection and move on.
		p.log.Error("malformed command record sent to DLQ", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		produce(&kgo.Record{Topic: events.TopicDLQ, Partition: 0, Key: rec.Key, Value: rec.Value, Headers: []kgo.RecordHeader{
			{Key: "reason", Value: []byte(fmt.Sprintf("malformed command record: %v", err))},
			{Key: "source", Value: []byte(fmt.Sprintf("%s/%d/%d", rec.Topic, rec.Partition, rec.Offset))},
		}})
		return ""
	}
	reply := func(r Reply) {
		r.RequestID, r.CommandID = req.RequestID, req.CommandID
		b, _ := json.Marshal(r)
		produce(&kgo.Record{Topic: events.TopicReplies, Partition: rec.Partition, Key: []byte(req.RequestID), Value: b})
	}
	cmd, err := DecodeCommand(req.Command)
	if err != nil {
		var ve *ValidationError
		p2 := httpx.NewProblem(http.StatusUnprocessableEntity, "validation", err.Error())
		if errors.As(err, &ve) {
			p2.Errors = ve.Errors
		}
		reply(Reply{Status: p2.Status, Problem: p2})
		return ""
	}
	payload, _ := cmd.Validate()
	st := ps.tenants[cmd.Tenant]
	if st == nil {
		st = NewTenantState(cmd.Tenant)
		ps.tenants[cmd.Tenant] = st
	}
	if req.Preflight {
		reply(p.preflight(ctx, st, req, cmd, payload))
		return ""
	}
	receiptID := ReceiptIDFor(req.CommandID)
	sl, vp, err := p.sealSelective(ctx, cmd.Tenant, req.CommandID, receiptID, req.Command, payload)
	if vp != nil {
		reply(Reply{Status: vp.Status, Problem: vp})
		return ""
	}
	if err != nil {
		p.log.Error("selective disclosure", "tenant", cmd.Tenant, "command_id", req.CommandID, "err", err)
		pr := httpx.NewProblem(http.StatusServiceUnavailable, "unavailable",
			"could not seal selective attributes ("+err.Error()+"); nothing was appended; retry with the same Idempotency-Key")
		reply(Reply{Status: pr.Status, Problem: pr})
		return ""
	}
	bodyHash := events.EvidenceHash(sl.command)
	if o, ok := st.Commands[req.CommandID]; ok {
		if o.BodyHash != bodyHash {
			pr := httpx.NewProblem(http.StatusUnprocessableEntity, "idempotency-key-reused",
				"Idempotency-Key was already used for a different command body (receipt "+o.ReceiptID+")")
			reply(Reply{Status: pr.Status, Problem: pr})
			return ""
		}
		reply(outcomeReply(cmd.Tenant, o, true))
		return ""
	}

	if !req.Deadline.IsZero() && p.cfg.Now().After(req.Deadline) {
		p.metrics.expired.Inc()
		pr := httpx.NewProblem(http.StatusGatewayTimeout, "expired",
			"the command expired in the queue before it was decided; nothing was appended; retry with the same Idempotency-Key")
		reply(Reply{Status: pr.Status, Problem: pr})
		return ""
	}
	start := time.Now()
	now := p.cfg.Now()
	var expires time.Time
	switch pl := payload.(type) {
	case *ApprovalGrant:
		var vp *httpx.Problem
		if expires, vp = approvalExpiry(pl, now); vp != nil {
			reply(Reply{Status: vp.Status, Problem: vp})
			return ""
		}
	case *PolicyPublish:
		if vp := p.checkBundle(ctx, pl); vp != nil {
			reply(Reply{Status: vp.Status, Problem: vp})
			return ""
		}
	case *PricingSet:
		if p.cfg.ValidatePrice != nil {
			if err := p.cfg.ValidatePrice(*pl); err != nil {
				vp := fieldProblem("payload", "the price catalog cannot apply this price: "+err.Error())
				reply(Reply{Status: vp.Status, Problem: vp})
				return ""
			}
		}
	}
	in := PolicyInput(st, req.Principal, cmd, payload, now)
	d := p.cfg.Policy.Decide(ctx, in)
	res := Decide(st, cmd, payload, d)
	if res.Decision == "" {
		reply(Reply{Status: res.Status, Problem: res.Problem})
		return ""
	}
	var purge bool
	if res.Decision == events.DecisionAllow && res.Change != nil {
		switch pl := payload.(type) {
		case *ApprovalGrant:
			a := res.Change.Approval
			a.ID, a.Approver, a.ApproverRoles, a.GrantedAt, a.ExpiresAt = receiptID, req.Principal.ID, in.Principal.Roles, now.UTC(), expires
		case *EntityDelete:
			// The approvals the policy counted are used up by this delete;
			// a dual-controlled delete always purges the subject.
			for _, a := range st.ValidApprovals(cmd.Type, pl.ID, req.Principal.ID, now) {
				res.Change.Consumed = append(res.Change.Consumed, a.ID)
			}
			purge = pl.Purge || len(res.Change.Consumed) > 0
		}
	}
	seq, prev := st.Chain.Next()
	r := events.Receipt{
		ID: receiptID, Action: cmd.Type, Actor: req.Principal.ID, Tenant: cmd.Tenant,
		Decision: res.Decision, EvidenceHash: bodyHash, PolicyVersion: d.PolicyVersion,
		CreatedAt: p.cfg.Now().UTC(), Selective: sl.commitments, Seq: seq, PrevHash: prev,
		CommandID: req.CommandID, Subject: subjectOf(payload), Command: sl.command,
		Principal: &events.ReceiptPrincipal{ID: req.Principal.ID, Roles: nonNilSlice(req.Principal.Roles), MFA: req.Principal.MFA, AuthTime: req.Principal.AuthTime},
	}
	r.Rationale, _ = json.Marshal(nonNilSlice(d.Rationale))
	r.Obligations, _ = json.Marshal(nonNilSlice(d.Obligations))
	if res.Change != nil {
		r.Change, _ = json.Marshal(res.Change)
	} else {
		r.Change = json.RawMessage("null")
	}
	payloadBytes, err := events.MarshalReceipt(r)
	if err != nil {
		pr := httpx.NewProblem(http.StatusInternalServerError, "internal", err.Error())
		reply(Reply{Status: pr.Status, Problem: pr})
		return ""
	}
	env := p.cfg.Signer.Sign(payloadBytes)
	value, _ := env.Marshal()
	var shredded []int64
	if purge {
		// Destroy the subject's keys before anything is appended: if this
		// fails, nothing is; if the transaction aborts afterwards, the retry
		// finds them shredded by this same receipt id.
		if shredded, err = p.shred(ctx, cmd.Tenant, r.Subject, r.ID); err != nil {
			p.log.Error("purge: shredding subject keys", "tenant", cmd.Tenant, "subject", r.Subject, "err", err)
			pr := httpx.NewProblem(http.StatusServiceUnavailable, "unavailable",
				"could not erase the subject's keys ("+err.Error()+"); nothing was appended; retry with the same Idempotency-Key")
			reply(Reply{Status: pr.Status, Problem: pr})
			return ""
		}
	}
	if err := st.applyOwn(r, payloadBytes, res.Change); err != nil {
		// Our own receipt does not extend our own chain: a bug, never skipped.
		panic(fmt.Sprintf("processor: own receipt rejected: %v", err))
	}
	p.metrics.decide.Observe(time.Since(start).Seconds())
	headers := []kgo.RecordHeader{
		{Key: "receipt_id", Value: []byte(r.ID)},
		{Key: "tenant", Value: []byte(r.Tenant)},
		{Key: "decision", Value: []byte(r.Decision)},
	}
	if sl.disclosures != nil && res.Decision == events.DecisionAllow {
		// A denied command changes nothing, so its values are not kept.
		b, _ := json.Marshal(sl.disclosures)
		headers = append(headers, kgo.RecordHeader{Key: events.DisclosureHeader, Value: b})
	}
	produce(&kgo.Record{Topic: events.TopicEvents, Partition: rec.Partition, Key: []byte(cmd.Tenant), Value: value, Headers: headers})
	if res.Decision == events.DecisionAllow {
		switch pl := payload.(type) {
		case *PolicyPublish:
			produce(p.bundleUpdate(r, value, pl))
		case *EntityDelete:
			if purge {
				produce(p.purgeManifest(st, rec.Partition, r, res.Change, shredded, d.PolicyVersion))
			}
		}
	}
	reply(outcomeReply(cmd.Tenant, st.Commands[req.CommandID], false))
	return res.Decision
}

func outcomeReply(tenant string, o Outcome, replayed bool) Reply {
	r := Reply{Status: o.Status(), ReceiptID: o.ReceiptID, Decision: o.Decision, Seq: o.Seq, Version: o.Version,
		Consistency: events.ConsistencyToken(tenant, o.Seq), Replayed: replayed}
	if o.Decision == events.DecisionDeny {
		pr := httpx.NewProblem(http.StatusForbidden, "policy-denied", "policy denied the command; a deny receipt was appended")
		pr.ReceiptID, pr.Seq, pr.Rationale, pr.Consistency = o.ReceiptID, o.Seq, o.Rationale, r.Consistency
		r.Problem = pr
	}
	return r
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func subjectOf(payload any) string {
	switch p := payload.(type) {
	case *EntityCreate:
		return p.ID
	case *EntityUpdate:
		return p.ID
	case *EntityDelete:
		return p.ID
	case *RelationChange:
		return p.From
	case *PricingSet:
		return "price:" + p.Meter
	case *ApprovalGrant:
		return p.Resource
	case *PolicyPublish:
		return "policy:bundle"
	}
	return ""
}

// LoadPartition rebuilds the tenant states of one events partition by reading
// it (read-committed) from the start up to its last stable offset, checking
// every tenant's hash chain on the way. verify, when set, is called for each
// envelope (e.g. to check signatures).
func LoadPartition(ctx context.Context, brokers []string, part int32, verify func(events.Envelope) error) (map[string]*TenantState, int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, 0, err
	}
	defer cl.Close()
	tenants := map[string]*TenantState{}
	n := 0
	err = events.ReadToStable(ctx, cl, events.TopicEvents, []int32{part}, func(rec *kgo.Record) error {
		env, err := events.ParseEnvelope(rec.Value)
		if err != nil {
			return fmt.Errorf("offset %d: %w", rec.Offset, err)
		}
		if verify != nil {
			if err := verify(env); err != nil {
				return fmt.Errorf("offset %d: %w", rec.Offset, err)
			}
		}
		r, err := events.ParseReceipt(env.Payload)
		if err != nil {
			return fmt.Errorf("offset %d: %w", rec.Offset, err)
		}
		st := tenants[r.Tenant]
		if st == nil {
			st = NewTenantState(r.Tenant)
			tenants[r.Tenant] = st
		}
		if err := st.ApplyReceipt(r, env.Payload); err != nil {
			return fmt.Errorf("offset %d: %w", rec.Offset, err)
		}
		n++
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return tenants, n, nil
}
