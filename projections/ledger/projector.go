package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

// projectorLock is the session advisory lock held by the one active ledger
// projector; others wait (hot standby) instead of fighting over positions.
const projectorLock int64 = 0x636f732d6c656467 // "cos-ledg"

// Config configures the ledger projector.
type Config struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// Pool is the Postgres pool; the schema must be migrated (required).
	Pool *pgxpool.Pool
	// Signer signs checkpoints (required).
	Signer CheckpointSigner
	// Keys, when set, verifies every envelope's signature; a receipt that
	// does not verify breaks its tenant (optional, default: no verification).
	Keys *keyfile.KeySet
	// CheckpointInterval between checkpoint rounds; a tenant gets a new
	// checkpoint when its tree grew (optional, default 10s).
	CheckpointInterval time.Duration
	// MaxWait bounds one Kafka fetch (optional, default 500ms).
	MaxWait time.Duration
	// Logger (optional) and Registerer (optional) for metrics.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// ClientOpts are extra franz-go options (optional).
	ClientOpts []kgo.Opt
	// Evidence stores each receipt's evidence (its command bytes, which
	// evidence_hash names) in the same transaction as the receipt, and
	// erases the blobs purge manifests list (optional: without it no
	// evidence is kept).
	Evidence EvidenceStore
}

// EvidenceStore is the content-addressed evidence store (evidence.Store).
// Delete of a blob that is already gone must return nil.
type EvidenceStore interface {
	PutTx(ctx context.Context, tx pgx.Tx, blobs [][]byte) error
	Delete(ctx context.Context, hash string) error
}

// Validate reports every missing field.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("ledger projector: brokers required"))
	}
	if c.Pool == nil {
		errs = append(errs, errors.New("ledger projector: postgres pool required"))
	}
	if c.Signer.Name == "" || len(c.Signer.Key) == 0 {
		errs = append(errs, errors.New("ledger projector: checkpoint signer (name and key) required"))
	}
	return errors.Join(errs...)
}

// ErrClusterMismatch is returned by Run when the stored positions were
// written against another Kafka cluster.
var ErrClusterMismatch = errors.New("ledger: Kafka cluster mismatch")

// ErrFenced is returned by Run when another writer moved a stored position.
var ErrFenced = errors.New("ledger: positions moved by another writer")

// Projector folds companyos.events.v1 into the ledger tables.
//
// It is deliberately not a watermill handler (decision 10 covers the other
// projectors): watermill delivers one message per partition at a time and
// waits for its ack, which rules out the per-fetch batching the ledger needs
// for ≥ 20k receipts/s (one Postgres transaction per batch instead of per
// receipt), and it keeps positions as consumer-group offsets, while the
// ledger must store its exact read-committed positions in the same Postgres
// transaction as the rows they produced. events.Follow gives both: whole
// fetches and exact positions.
type Projector struct {
	cfg    Config
	log    *slog.Logger
	ledger *Ledger

	heads     map[string]*tenantHead // owned by the Run goroutine
	positions map[int32]int64
	lags      map[int32]int64
	clusterID string
	ready     atomic.Bool

	// test hooks: called inside / right after the batch transaction.
	beforeCommit func(events.Batch) error
	afterCommit  func(events.Batch) error

	receipts       prometheus.Counter
	verifyFailures *prometheus.CounterVec
	skipped        prometheus.Counter
	lag            prometheus.Gauge
	broken         prometheus.Gauge
	cpSize         prometheus.Gauge
	cpAge          prometheus.Gauge
	batchSecs      prometheus.Histogram
}

type tenantHead struct {
	seq    int64
	hash   string
	size   int64
	broken string // reason; "" = ok
}

// NewProjector validates cfg and registers the metrics.
func NewProjector(cfg Config) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = 10 * time.Second
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l, err := NewLedger(cfg.Pool, cfg.Signer)
	if err != nil {
		return nil, err
	}
	p := &Projector{cfg: cfg, log: cfg.Logger.With("component", "ledger-projector"), ledger: l}
	p.receipts = prometheus.NewCounter(prometheus.CounterOpts{Name: "ledger_receipts_total", Help: "Receipts applied to the provenance ledger (provenance_receipts_total counts them as the processor commits them)."})
	p.verifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "provenance_verification_failures_total",
		Help: "Receipts the ledger refused, by kind: signature (bad or unknown key, malformed envelope), fork, gap, chain (prev_hash), duplicate_id."}, []string{"kind"})
	for _, k := range []string{"signature", "fork", "gap", "chain", "duplicate_id"} {
		p.verifyFailures.WithLabelValues(k)
	}
	p.skipped = prometheus.NewCounter(prometheus.CounterOpts{Name: "ledger_skipped_receipts_total", Help: "Receipts not applied because their tenant's chain is broken."})
	p.lag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ledger_lag_records", Help: "Records between the ledger's positions and the last stable offsets, summed over partitions."})
	p.broken = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ledger_broken_tenants", Help: "Tenants whose chain is broken (gap, fork, bad signature); their receipts are no longer applied."})
	p.cpSize = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ledger_checkpoint_size", Help: "Leaves covered by the latest checkpoints, summed over tenants."})
	p.cpAge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ledger_checkpoint_age_seconds", Help: "Age of the oldest latest-checkpoint among tenants with receipts it does not cover (0 when all are covered)."})
	p.batchSecs = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ledger_batch_seconds", Help: "Time to apply one fetched batch in one Postgres transaction.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.receipts, p.skipped, p.lag, p.broken, p.cpSize, p.cpAge, p.batchSecs, p.verifyFailures)
	}
	return p, nil
}

// Ledger is the read side (proofs, checkpoints) over the same pool.
func (p *Projector) Ledger() *Ledger { return p.ledger }

// Ready reports whether the projector holds the writer lock and is reading.
func (p *Projector) Ready() bool { return p.ready.Load() }

// Checkpoint signs a checkpoint of tenant's tree now (on demand).
func (p *Projector) Checkpoint(ctx context.Context, tenant string) (Checkpoint, error) {
	return p.ledger.Checkpoint(ctx, tenant)
}

// Run waits to become the single active ledger writer, then follows the log
// from the stored positions until ctx ends (returning nil) or a fatal error.
func (p *Projector) Run(ctx context.Context) error {
	conn, err := p.cfg.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("ledger projector: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", projectorLock)
		conn.Release()
	}()
	for waited := false; ; waited = true {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", projectorLock).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ledger projector: writer lock: %w", err)
		}
		if got {
			break
		}
		if !waited {
			p.log.Info("another ledger projector is active; standing by")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}

	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...)}, p.cfg.ClientOpts...)...)
	if err != nil {
		return fmt.Errorf("ledger projector: kafka client: %w", err)
	}
	defer cl.Close()
	from, err := p.load(ctx, cl)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := p.sweepErasures(ctx); err != nil {
		p.log.Error("ledger: evidence erasure (retried at the next purge)", "err", err)
	}

	cpCtx, stopCP := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(p.cfg.CheckpointInterval)
		defer t.Stop()
		for {
			select {
			case <-cpCtx.Done():
				return
			case <-t.C:
				if err := p.CheckpointAll(cpCtx); err != nil && cpCtx.Err() == nil {
					p.log.Error("ledger checkpoints", "err", err)
				}
			}
		}
	}()
	p.ready.Store(true)
	p.log.Info("ledger projector following", "cluster", p.clusterID, "from", from)
	err = p.follow(ctx, cl, from)
	p.ready.Store(false)
	stopCP()
	wg.Wait()
	// Leave a checkpoint covering everything applied, so a restart or an
	// auditor does not wait a full interval.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if cerr := p.CheckpointAll(fctx); cerr != nil {
		p.log.Warn("final ledger checkpoints", "err", cerr)
	}
	cancel()
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

// load reads the cluster id, the stored positions (refusing another
// cluster's) and the tenant heads, and returns where to start reading.
func (p *Projector) load(ctx context.Context, cl *kgo.Client) (map[int32]int64, error) {
	adm := kadm.NewClient(cl)
	md, err := adm.Metadata(ctx, events.TopicEvents)
	if err != nil {
		return nil, fmt.Errorf("ledger projector: kafka metadata: %w", err)
	}
	p.clusterID = md.Cluster
	p.positions, p.lags = map[int32]int64{}, map[int32]int64{}
	rows, err := p.cfg.Pool.Query(ctx, "SELECT cluster_id, partition, next_offset FROM ledger_positions WHERE topic = $1", events.TopicEvents)
	if err != nil {
		return nil, fmt.Errorf("ledger projector: load positions: %w (is the database migrated? run companyos migrate)", err)
	}
	var other string
	for rows.Next() {
		var cluster string
		var part int32
		var next int64
		if err := rows.Scan(&cluster, &part, &next); err != nil {
			rows.Close()
			return nil, fmt.Errorf("ledger projector: load positions: %w", err)
		}
		if cluster != p.clusterID {
			other = cluster
		}
		p.positions[part] = next
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger projector: load positions: %w", err)
	}
	if other != "" {
		return nil, fmt.Errorf("%w: ledger positions belong to Kafka cluster %q, connected to %q: refusing to start; "+
			"point --kafka-brokers at the original cluster, or rebuild the ledger from this cluster's log into an empty database",
			ErrClusterMismatch, other, p.clusterID)
	}
	starts, err := adm.ListStartOffsets(ctx, events.TopicEvents)
	if err != nil {
		return nil, fmt.Errorf("ledger projector: list start offsets: %w", err)
	}
	from := map[int32]int64{}
	var lerr error
	starts.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			lerr = fmt.Errorf("ledger projector: start offset of %d: %w", o.Partition, o.Err)
			return
		}
		at, ok := p.positions[o.Partition]
		if !ok {
			at = o.Offset
			p.positions[o.Partition] = at
		} else if at < o.Offset {
			// Receipts were deleted before the ledger read them: never
			// skip silently.
			lerr = fmt.Errorf("ledger projector: partition %d: stored position %d is below the log start %d: receipts were lost", o.Partition, at, o.Offset)
		}
		from[o.Partition] = at
	})
	if lerr != nil {
		return nil, lerr
	}

	p.heads = map[string]*tenantHead{}
	hrows, err := p.cfg.Pool.Query(ctx, "SELECT tenant, seq, head_hash, tree_size, status, COALESCE(broken_reason, '') FROM tenant_heads")
	if err != nil {
		return nil, fmt.Errorf("ledger projector: load heads: %w", err)
	}
	defer hrows.Close()
	nbroken := 0
	for hrows.Next() {
		var t, status string
		h := &tenantHead{}
		if err := hrows.Scan(&t, &h.seq, &h.hash, &h.size, &status, &h.broken); err != nil {
			return nil, fmt.Errorf("ledger projector: load heads: %w", err)
		}
		if status == "broken" && h.broken == "" {
			h.broken = "broken"
		}
		if h.broken != "" {
			nbroken++
		}
		p.heads[t] = h
	}
	if err := hrows.Err(); err != nil {
		return nil, fmt.Errorf("ledger projector: load heads: %w", err)
	}
	p.broken.Set(float64(nbroken))
	return from, nil
}

// receiptFields are the payload fields the ledger stores; the rest of the
// payload is skipped by the decoder (rationale, command, change).
type receiptFields struct {
	ID            string            `json:"id"`
	Action        string            `json:"action"`
	Actor         string            `json:"actor"`
	Tenant        string            `json:"tenant"`
	Decision      string            `json:"decision"`
	EvidenceHash  string            `json:"evidence_hash"`
	PolicyVersion string            `json:"policy_version"`
	CreatedAt     time.Time         `json:"created_at"`
	Seq           int64             `json:"seq"`
	PrevHash      string            `json:"prev_hash"`
	CommandID     string            `json:"command_id"`
	Subject       string            `json:"subject"`
	Selective     map[string]string `json:"selective"`
	Command       json.RawMessage   `json:"command"`
}

type parsed struct {
	rec     *kgo.Record
	tenant  string
	payload []byte
	r       receiptFields
	err     error // unparseable or bad signature
	// disclosures are the sealed selective values from the record header;
	// nil when absent or unusable (the receipt itself is still applied).
	disclosures *events.DisclosureSet
	// purge is the manifest of a purge.manifest receipt.
	purge *events.Purge
}

func (p *Projector) parse(rec *kgo.Record) parsed {
	out := parsed{rec: rec, tenant: string(rec.Key)}
	env, err := events.ParseEnvelope(rec.Value)
	if err != nil {
		out.err = err
		return out
	}
	out.payload = env.Payload
	if err := json.Unmarshal(env.Payload, &out.r); err != nil {
		out.err = fmt.Errorf("%w: receipt payload: %v", events.ErrBadEnvelope, err)
		return out
	}
	out.tenant = out.r.Tenant
	if p.cfg.Keys != nil {
		if err := env.Verify(*p.cfg.Keys); err != nil {
			out.err = err
			return out
		}
	}
	if out.r.Action == purgeManifestAction && out.r.Decision == events.DecisionAllow {
		var full struct {
			Change events.Change `json:"change"`
		}
		if err := json.Unmarshal(env.Payload, &full); err != nil || full.Change.Purge == nil {
			out.err = fmt.Errorf("%w: purge manifest without a purge change: %v", events.ErrBadEnvelope, err)
			return out
		}
		out.purge = full.Change.Purge
	}
	for _, h := range rec.Headers {
		if h.Key != events.DisclosureHeader {
			continue
		}
		var ds events.DisclosureSet
		switch err := json.Unmarshal(h.Value, &ds); {
		case err != nil:
			p.log.Error("ledger: unreadable disclosure header; selective values of this receipt are not disclosable",
				"receipt", out.r.ID, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		case ds.Tenant != out.r.Tenant:
			p.log.Error("ledger: disclosure header names another tenant; ignored", "receipt", out.r.ID, "header_tenant", ds.Tenant)
		default:
			for f := range ds.Fields {
				if _, ok := out.r.Selective[f]; !ok {
					p.log.Error("ledger: disclosure for a field the receipt does not commit to; ignored", "receipt", out.r.ID, "field", f)
					delete(ds.Fields, f)
				}
			}
			out.disclosures = &ds
		}
	}
	return out
}

// parseAll parses a batch on every core: JSON and signature checks dominate
// the CPU cost of a batch.
func (p *Projector) parseAll(recs []*kgo.Record) []parsed {
	out := make([]parsed, len(recs))
	const chunk = 256
	if len(recs) <= chunk {
		for i, r := range recs {
			out[i] = p.parse(r)
		}
		return out
	}
	var wg sync.WaitGroup
	for lo := 0; lo < len(recs); lo += chunk {
		hi := min(lo+chunk, len(recs))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				out[i] = p.parse(recs[i])
			}
		}()
	}
	wg.Wait()
	return out
}

// batchTree is the Merkle overlay of one tenant during a batch: hashes
// written in this transaction, plus hashes already read from it.
type batchTree struct {
	hashes map[int64]tlog.Hash
}

// follow runs a two-stage pipeline: the Follow goroutine fetches and
// parses (JSON, signatures) batch k+1 while the writer goroutine commits
// batch k, strictly in log order. A writer error stops the fetching.
func (p *Projector) follow(ctx context.Context, cl *kgo.Client, from map[int32]int64) error {
	type job struct {
		b  events.Batch
		ps []parsed
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	jobs := make(chan job, 1)
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for j := range jobs {
			if werr != nil {
				continue // drain; nothing more is written after a failure
			}
			if werr = p.apply(j.b, j.ps); werr != nil {
				stop()
			}
		}
	}()
	fetched := map[int32]int64{}
	for k, v := range from {
		fetched[k] = v
	}
	err := events.Follow(fctx, cl, events.TopicEvents, from, p.cfg.MaxWait, func(b events.Batch) error {
		p.lags[b.Partition] = max(b.Stable-b.Next, 0)
		p.updateLag()
		if len(b.Records) == 0 && b.Next == fetched[b.Partition] {
			return nil
		}
		fetched[b.Partition] = b.Next
		j := job{b: b, ps: p.parseAll(b.Records)}
		select {
		case jobs <- j:
			return nil
		case <-fctx.Done():
			return fctx.Err()
		}
	})
	close(jobs)
	<-done // the writer finishes what was handed to it: a clean stop flushes
	if werr != nil {
		return werr
	}
	return err
}

// apply writes one fetched batch of one partition in one transaction:
// receipts, stored hashes, heads and the position advance together, so a
// crash at any point leaves either all of it or none, and a restart re-reads
// from the stored position. Receipts at or below a tenant's head are
// compared with the stored ones: identical means a duplicate (a no-op),
// different means a fork.
func (p *Projector) apply(b events.Batch, ps []parsed) error {
	start := time.Now()
	// Receipt ids are unique across the log unless the writer has a bug, so
	// the batch is first written without looking them up; a unique
	// violation on the id rolls it back and redoes it with the lookup, which
	// then breaks the offending tenant instead of stopping the ledger.
	err := p.write(b, ps, false, start)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "receipts_pkey" {
		p.log.Warn("receipt id reused; redoing the batch with id checks", "partition", b.Partition, "detail", pgErr.Detail)
		err = p.write(b, ps, true, start)
	}
	return err
}

func (p *Projector) write(b events.Batch, ps []parsed, checkIDs bool, start time.Time) error {
	prev := p.positions[b.Partition]
	ctx := context.Background() // a started batch finishes; Follow checks ctx between fetches
	tx, err := p.cfg.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("ledger projector: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit

	// Receipt ids already stored (duplicates, or an id reused elsewhere).
	var ids []string
	for i := range ps {
		if checkIDs && ps[i].err == nil {
			ids = append(ids, ps[i].r.ID)
		}
	}
	known := map[string]storedRef{}
	if checkIDs && len(ids) > 0 {
		rows, err := tx.Query(ctx, "SELECT id, tenant, seq, payload_hash FROM receipts WHERE id = ANY($1)", ids)
		if err != nil {
			return fmt.Errorf("ledger projector: look up ids: %w", err)
		}
		for rows.Next() {
			var id string
			var s storedRef
			if err := rows.Scan(&id, &s.tenant, &s.seq, &s.hash); err != nil {
				rows.Close()
				return fmt.Errorf("ledger projector: look up ids: %w", err)
			}
			known[id] = s
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("ledger projector: look up ids: %w", err)
		}
	}

	touched := map[string]*tenantHead{}
	head := func(t string) *tenantHead {
		if h, ok := touched[t]; ok {
			return h
		}
		h := &tenantHead{hash: events.GenesisHash}
		if old, ok := p.heads[t]; ok {
			*h = *old
		}
		touched[t] = h
		return h
	}
	trees := map[string]*batchTree{}
	batchIDs := map[string]storedRef{}
	batchSeqs := map[seqKey]string{} // payload hashes applied in this batch
	var receiptRows, hashRows, disclosureRows [][]any
	var purges []purgeRow
	var evidenceBlobs [][]byte
	applied, skipped, newlyBroken := 0, 0, 0
	breakTenant := func(h *tenantHead, t, kind, reason string) {
		p.verifyFailures.WithLabelValues(kind).Inc()
		h.broken = reason
		newlyBroken++
		p.log.Error("ledger: tenant chain broken; its later receipts are not applied until repaired", "tenant", t, "reason", reason)
	}

	for i := range ps {
		x := &ps[i]
		where := fmt.Sprintf("partition %d offset %d", b.Partition, x.rec.Offset)
		h := head(x.tenant)
		if h.broken != "" {
			skipped++
			continue
		}
		if x.err != nil {
			breakTenant(h, x.tenant, "signature", fmt.Sprintf("%s: %v", where, x.err))
			continue
		}
		r := &x.r
		payloadHash := events.HashPayload(x.payload)
		if r.Seq <= h.seq {
			// Already applied (redelivery) or a fork.
			stored, ok := batchSeqs[seqKey{x.tenant, r.Seq}]
			if !ok {
				var err error
				if stored, err = storedHashAt(ctx, tx, x.tenant, r.Seq); err != nil {
					return err
				}
			}
			if stored == payloadHash {
				continue
			}
			breakTenant(h, x.tenant, "fork", fmt.Sprintf("%s: fork at seq %d: payload %s, ledger has %s", where, r.Seq, payloadHash, stored))
			continue
		}
		if r.Seq != h.seq+1 {
			breakTenant(h, x.tenant, "gap", fmt.Sprintf("%s: gap: seq %d after %d", where, r.Seq, h.seq))
			continue
		}
		if r.PrevHash != h.hash {
			breakTenant(h, x.tenant, "chain", fmt.Sprintf("%s: seq %d prev_hash %s, head is %s", where, r.Seq, r.PrevHash, h.hash))
			continue
		}
		if s, ok := known[r.ID]; ok {
			breakTenant(h, x.tenant, "duplicate_id", fmt.Sprintf("%s: receipt id %s already used by %s seq %d", where, r.ID, s.tenant, s.seq))
			continue
		}
		if s, ok := batchIDs[r.ID]; ok {
			breakTenant(h, x.tenant, "duplicate_id", fmt.Sprintf("%s: receipt id %s already used by %s seq %d", where, r.ID, s.tenant, s.seq))
			continue
		}
		batchIDs[r.ID] = storedRef{tenant: x.tenant, seq: r.Seq}

		tr := trees[x.tenant]
		if tr == nil {
			tr = &batchTree{hashes: map[int64]tlog.Hash{}}
			trees[x.tenant] = tr
		}
		n := r.Seq - 1 // leaf index
		if n != h.size {
			return fmt.Errorf("ledger projector: tenant %s: tree size %d does not match seq %d", x.tenant, h.size, r.Seq)
		}
		hs, err := tlog.StoredHashes(n, x.payload, p.overlayReader(ctx, tx, x.tenant, tr))
		if err != nil {
			return fmt.Errorf("ledger projector: tenant %s leaf %d: %w", x.tenant, n, err)
		}
		base := tlog.StoredHashIndex(0, n)
		for j, hh := range hs {
			tr.hashes[base+int64(j)] = hh
			hashRows = append(hashRows, []any{x.tenant, base + int64(j), hh[:]})
		}
		receiptRows = append(receiptRows, []any{r.ID, x.tenant, r.Seq, r.Action, r.Actor, r.Decision, r.PolicyVersion, r.EvidenceHash,
			r.CreatedAt, r.PrevHash, payloadHash, x.rec.Value, b.Partition, x.rec.Offset, r.CommandID, r.Subject, redactionsOf(r.Selective)})
		if x.purge != nil {
			purges = append(purges, purgeRow{tenant: x.tenant, subject: x.purge.Subject, receipt: r.ID, evidence: x.purge.Evidence})
		}
		if p.cfg.Evidence != nil && len(r.Command) > 0 {
			if events.EvidenceHash(r.Command) == r.EvidenceHash {
				evidenceBlobs = append(evidenceBlobs, r.Command)
			} else {
				p.log.Warn("ledger: evidence_hash does not name the receipt's command; evidence not stored", "receipt", r.ID)
			}
		}
		if ds := x.disclosures; ds != nil {
			for _, f := range slices.Sorted(maps.Keys(ds.Fields)) {
				sv := ds.Fields[f]
				disclosureRows = append(disclosureRows, []any{r.ID, f, x.tenant, ds.Subject, ds.KeyID, sv.Nonce, sv.Ciphertext})
			}
		}
		batchSeqs[seqKey{x.tenant, r.Seq}] = payloadHash
		h.seq, h.hash, h.size = r.Seq, payloadHash, h.size+1
		applied++
	}

	if len(receiptRows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"receipts"}, []string{"id", "tenant", "seq", "action", "actor", "decision", "policy_version",
			"evidence_hash", "created_at", "prev_hash", "payload_hash", "envelope", "kafka_partition", "kafka_offset", "command_id", "subject", "redactions"},
			pgx.CopyFromRows(receiptRows)); err != nil {
			return fmt.Errorf("ledger projector: copy receipts: %w", err)
		}
		if len(disclosureRows) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"disclosures"}, []string{"receipt_id", "field", "tenant", "subject", "key_id", "nonce", "ciphertext"},
				pgx.CopyFromRows(disclosureRows)); err != nil {
				return fmt.Errorf("ledger projector: copy disclosures: %w", err)
			}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"merkle_hashes"}, []string{"tenant", "idx", "hash"}, pgx.CopyFromRows(hashRows)); err != nil {
			return fmt.Errorf("ledger projector: copy merkle hashes: %w", err)
		}
	}
	// Erasure: the subject's sealed values go with its shredded keys (they
	// could no longer be opened anyway); the receipts keep their signed
	// commitments.
	for _, pr := range purges {
		if _, err := tx.Exec(ctx, "DELETE FROM disclosures WHERE tenant = $1 AND subject = $2", pr.tenant, pr.subject); err != nil {
			return fmt.Errorf("ledger projector: purge %s/%s: %w", pr.tenant, pr.subject, err)
		}
		if len(pr.evidence) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO evidence_erasures (hash, tenant, receipt_id)
				SELECT h, $2, $3 FROM unnest($1::text[]) AS h ON CONFLICT DO NOTHING`, pr.evidence, pr.tenant, pr.receipt); err != nil {
				return fmt.Errorf("ledger projector: purge %s/%s: record erasures: %w", pr.tenant, pr.subject, err)
			}
		}
	}
	if len(evidenceBlobs) > 0 {
		if err := p.cfg.Evidence.PutTx(ctx, tx, evidenceBlobs); err != nil {
			return fmt.Errorf("ledger projector: store evidence: %w", err)
		}
	}
	if len(touched) > 0 {
		var ts, hashes, statuses []string
		var seqs, sizes []int64
		var reasons []*string
		for t, h := range touched {
			ts, seqs, hashes, sizes = append(ts, t), append(seqs, h.seq), append(hashes, h.hash), append(sizes, h.size)
			if h.broken != "" {
				reason := h.broken
				statuses, reasons = append(statuses, "broken"), append(reasons, &reason)
			} else {
				statuses, reasons = append(statuses, "ok"), append(reasons, nil)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tenant_heads (tenant, seq, head_hash, tree_size, status, broken_reason, updated_at)
			SELECT t, s, h, z, st, br, now() FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[]) AS u(t, s, h, z, st, br)
			ON CONFLICT (tenant) DO UPDATE SET seq = EXCLUDED.seq, head_hash = EXCLUDED.head_hash, tree_size = EXCLUDED.tree_size,
				status = EXCLUDED.status, broken_reason = EXCLUDED.broken_reason, updated_at = now()`,
			ts, seqs, hashes, sizes, statuses, reasons); err != nil {
			return fmt.Errorf("ledger projector: update heads: %w", err)
		}
	}
	// The position moves only from where this process read it: a second
	// writer (which the advisory lock should already exclude) is fenced.
	tag, err := tx.Exec(ctx, `INSERT INTO ledger_positions (cluster_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
		ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, cluster_id = EXCLUDED.cluster_id
		WHERE ledger_positions.next_offset = $5 AND ledger_positions.cluster_id = $1`,
		p.clusterID, events.TopicEvents, b.Partition, b.Next, prev)
	if err != nil {
		return fmt.Errorf("ledger projector: store position: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("%w: partition %d is no longer at %d", ErrFenced, b.Partition, prev)
	}
	if p.beforeCommit != nil {
		if err := p.beforeCommit(b); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("ledger projector: commit: %w", err)
	}
	for t, h := range touched {
		p.heads[t] = h
	}
	p.positions[b.Partition] = b.Next
	p.receipts.Add(float64(applied))
	p.skipped.Add(float64(skipped))
	if newlyBroken > 0 {
		p.broken.Add(float64(newlyBroken))
	}
	p.batchSecs.Observe(time.Since(start).Seconds())
	if len(purges) > 0 {
		if err := p.sweepErasures(ctx); err != nil {
			p.log.Error("ledger: evidence erasure (retried at the next purge and at start)", "err", err)
		}
	}
	if p.afterCommit != nil {
		return p.afterCommit(b)
	}
	return nil
}

// redactionsOf is the receipts.redactions value: the selective fields whose
// values the default view withholds (their commitments stay signed).
func redactionsOf(selective map[string]string) []byte {
	b, _ := json.Marshal(slices.Sorted(maps.Keys(selective)))
	if len(selective) == 0 {
		return []byte("[]")
	}
	return b
}

// purgeManifestAction is the action of purge manifests (commands.ActionPurgeManifest).
const purgeManifestAction = "purge.manifest"

type purgeRow struct {
	tenant, subject, receipt string
	evidence                 []string
}

// sweepErasures deletes the evidence blobs recorded in evidence_erasures
// and then their rows. Blobs already gone count as erased.
func (p *Projector) sweepErasures(ctx context.Context) error {
	if p.cfg.Evidence == nil {
		return nil
	}
	rows, err := p.cfg.Pool.Query(ctx, "SELECT DISTINCT hash FROM evidence_erasures")
	if err != nil {
		return fmt.Errorf("ledger: evidence erasures: %w", err)
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("ledger: evidence erasures: %w", err)
	}
	for _, h := range hashes {
		if err := p.cfg.Evidence.Delete(ctx, h); err != nil {
			return fmt.Errorf("ledger: erase evidence %s: %w", h, err)
		}
		if _, err := p.cfg.Pool.Exec(ctx, "DELETE FROM evidence_erasures WHERE hash = $1", h); err != nil {
			return fmt.Errorf("ledger: evidence erasures: %w", err)
		}
	}
	if len(hashes) > 0 {
		p.log.Info("ledger: evidence erased", "blobs", len(hashes))
	}
	return nil
}

type seqKey struct {
	tenant string
	seq    int64
}

type storedRef struct {
	tenant string
	seq    int64
	hash   string
}

func storedHashAt(ctx context.Context, tx pgx.Tx, tenant string, seq int64) (string, error) {
	var h string
	err := tx.QueryRow(ctx, "SELECT payload_hash FROM receipts WHERE tenant = $1 AND seq = $2", tenant, seq).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil // below the head but missing: reported as a fork
	}
	if err != nil {
		return "", fmt.Errorf("ledger projector: stored receipt %s seq %d: %w", tenant, seq, err)
	}
	return h, nil
}

// overlayReader serves stored hashes from the batch first, then from the
// transaction, caching what it read.
func (p *Projector) overlayReader(ctx context.Context, tx pgx.Tx, tenant string, tr *batchTree) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		var missing []int64
		for _, idx := range indexes {
			if _, ok := tr.hashes[idx]; !ok {
				missing = append(missing, idx)
			}
		}
		if len(missing) > 0 {
			m, err := readHashes(ctx, tx, tenant, missing)
			if err != nil {
				return nil, err
			}
			for idx, h := range m {
				tr.hashes[idx] = h
			}
		}
		out := make([]tlog.Hash, len(indexes))
		for i, idx := range indexes {
			h, ok := tr.hashes[idx]
			if !ok {
				return nil, fmt.Errorf("ledger: tenant %s: stored hash %d missing", tenant, idx)
			}
			out[i] = h
		}
		return out, nil
	})
}

func (p *Projector) updateLag() {
	var sum int64
	for _, l := range p.lags {
		sum += l
	}
	p.lag.Set(float64(sum))
}

// CheckpointAll signs a checkpoint for every tenant whose tree grew past
// its latest checkpoint, and updates the checkpoint metrics.
func (p *Projector) CheckpointAll(ctx context.Context) error {
	rows, err := p.cfg.Pool.Query(ctx, `SELECT h.tenant FROM tenant_heads h
		WHERE h.tree_size > COALESCE((SELECT max(c.tree_size) FROM checkpoints c WHERE c.tenant = h.tenant), 0)`)
	if err != nil {
		return fmt.Errorf("ledger: tenants to checkpoint: %w", err)
	}
	var tenants []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}
		tenants = append(tenants, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var errs []error
	for _, t := range tenants {
		if _, err := p.ledger.Checkpoint(ctx, t); err != nil {
			errs = append(errs, err)
		}
	}
	var size int64
	var age float64
	if err := p.cfg.Pool.QueryRow(ctx, `SELECT COALESCE(sum(c.tree_size), 0)::bigint,
			COALESCE(max(CASE WHEN h.tree_size > c.tree_size THEN extract(epoch FROM now() - c.created_at) ELSE 0 END), 0)::float8
		FROM tenant_heads h JOIN LATERAL (SELECT tree_size, created_at FROM checkpoints WHERE tenant = h.tenant ORDER BY tree_size DESC LIMIT 1) c ON true`).
		Scan(&size, &age); err != nil {
		errs = append(errs, fmt.Errorf("ledger: checkpoint metrics: %w", err))
	} else {
		p.cpSize.Set(float64(size))
		p.cpAge.Set(age)
	}
	return errors.Join(errs...)
}
