package ledger

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

// Audit replay (`companyos replay`).
//
// Replay reads companyos.events.v1 from Kafka over a range of offsets, in log
// order per partition, and answers two questions:
//
//  1. Does the log verify? Every envelope's signature is checked against the
//     receipt key set (on every core), and every tenant's hash chain with
//     events.Chain, strictly in log order. The first broken link of each
//     tenant is reported with its partition and offset.
//  2. Does the live ledger match the log? The range is projected again into
//     a fresh shadow schema (replay_<time>_<random>) by the projector's own
//     parse and write path (Projector.parseAll and Projector.apply: same
//     chain rules, Merkle hashes and COPY), and the shadow is diffed against
//     the live tables in SQL: receipts by a FULL JOIN on id comparing every
//     column both schemas have (envelope bytes included) through an
//     injective SHA-256 row digest with IS DISTINCT FROM, then naming the
//     differing columns of the listed rows; then tenant heads, every stored
//     Merkle hash of the rebuilt leaves, Merkle roots and the roots of the
//     live checkpoints.
//
// Verification and the rebuild are deliberately separate: verification is
// strict about the log (a record whose Kafka key names another tenant than
// its payload, for instance, fails it), while the shadow reproduces exactly
// what the live projector does with the same records, so that a difference
// between shadow and live can only come from the database.
//
// A partial range (a start after a partition's log start) anchors each
// tenant's chain at the first receipt seen: its seq-1 and prev_hash are
// taken as given, checked against the live ledger's payload_hash at seq-1,
// and the shadow tree is seeded with the live ledger's Merkle hashes of the
// prefix (only the complete subtrees left of the anchor, at most log2(seq)
// of them), so that roots can still be compared. The prefix itself is not
// verified by a partial replay.
//
// Only the part of the range the live ledger has already projected is
// diffed: the range is cut at the live ledger's stored position per
// partition (read before the replay starts), and records beyond it are
// counted as pending rather than missing, so that replaying next to a running
// projector is not a false alarm. Live rows the stored positions say cannot
// exist yet (an offset at or past the live position, or a partition the live
// ledger never read) are always in scope and show as extra.

// AllPartitions, as a key of Bound.Offsets, applies its offset to every
// partition without an entry of its own.
const AllPartitions int32 = -1

// Broken-link kinds.
const (
	BrokenSignature = "signature" // the signature does not verify, or no key of the key set signed it
	BrokenMalformed = "malformed" // not a receipt envelope, or an unreadable payload
	BrokenChain     = "chain"     // gap, fork or wrong prev_hash (events.ErrChainBroken)
	BrokenTenantKey = "tenant"    // the record's Kafka key names another tenant than its payload
)

// Bound is one end of a replayed range. The zero Bound is open: the log start
// for ReplayConfig.From, the last stable offset for ReplayConfig.To. At most
// one of Offsets and Time may be set.
type Bound struct {
	// Offsets per partition; the AllPartitions key applies to every
	// partition without its own entry. From is inclusive, To exclusive.
	Offsets map[int32]int64
	// Time selects per partition the first offset whose record timestamp is
	// at or after it (kadm ListOffsetsAfterMilli). From is inclusive, To
	// exclusive.
	Time time.Time
}

func (b Bound) offset(p int32) (int64, bool) {
	if o, ok := b.Offsets[p]; ok {
		return o, true
	}
	o, ok := b.Offsets[AllPartitions]
	return o, ok
}

// ReplayConfig configures Replay.
type ReplayConfig struct {
	// Brokers are the Kafka seed brokers (required).
	Brokers []string
	// Pool is the live ledger's Postgres pool (required). Replay only reads
	// the live tables; the shadow schema is created in the same database.
	Pool *pgxpool.Pool
	// Keys verify the receipt signatures (required, at least one key).
	Keys keyfile.KeySet
	// Tenant limits the replay to one tenant's records, selected by their
	// Kafka key (optional, default: every tenant).
	Tenant string
	// From and To bound the range (optional, default: the whole log up to
	// the last stable offsets as of the start).
	From, To Bound
	// VerifyOnly skips the shadow rebuild and the diff (optional).
	VerifyOnly bool
	// KeepShadow leaves the shadow schema in place for inspection
	// (optional, default: dropped at the end, also on failure).
	KeepShadow bool
	// CheckpointVerifier is the note verifier key of the checkpoint signer
	// ("name+hash+key", Ledger.VerifierKey). When set, the signatures of the
	// live checkpoints in range are verified too (optional; their roots are
	// compared either way).
	CheckpointVerifier string
	// MaxListed caps each list of rows in the diff (missing, extra,
	// altered); counts are always exact (optional, default 100).
	MaxListed int
	// MaxWait bounds one Kafka fetch (optional, default 100ms).
	MaxWait time.Duration
	// Progress, when set, is called about every ProgressInterval (default
	// 1s) from a separate goroutine, and once per phase change.
	Progress         func(ReplayProgress)
	ProgressInterval time.Duration
	// ClientOpts are extra franz-go options (optional).
	ClientOpts []kgo.Opt
	// Logger (optional) receives warnings; the shadow projector's own logs
	// (every tenant it breaks) are discarded: they are in the report.
	Logger *slog.Logger

	// observe, a test hook, sees every selected record in the order the
	// chain check consumes it.
	observe func(tenant string, seq int64, partition int32, offset int64)
}

// Validate reports every invalid field.
func (c ReplayConfig) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("ledger: replay: brokers required"))
	}
	if c.Pool == nil {
		errs = append(errs, errors.New("ledger: replay: postgres pool required"))
	}
	if len(c.Keys.Keys) == 0 {
		errs = append(errs, errors.New("ledger: replay: receipt key set required"))
	} else if err := c.Keys.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("ledger: replay: receipt key set: %w", err))
	}
	for name, b := range map[string]Bound{"from": c.From, "to": c.To} {
		if len(b.Offsets) > 0 && !b.Time.IsZero() {
			errs = append(errs, fmt.Errorf("ledger: replay: %s: offsets and time are exclusive", name))
		}
		for p, o := range b.Offsets {
			if o < 0 || p < AllPartitions {
				errs = append(errs, fmt.Errorf("ledger: replay: %s: partition %d offset %d: want a partition ≥ 0 and an offset ≥ 0", name, p, o))
			}
		}
	}
	if !c.From.Time.IsZero() && !c.To.Time.IsZero() && !c.From.Time.Before(c.To.Time) {
		errs = append(errs, errors.New("ledger: replay: from time must be before to time"))
	}
	if c.CheckpointVerifier != "" {
		if _, err := note.NewVerifier(c.CheckpointVerifier); err != nil {
			errs = append(errs, fmt.Errorf("ledger: replay: checkpoint verifier: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ReplayProgress is a progress sample.
type ReplayProgress struct {
	Phase         string        // "read", "diff" or "done"
	Records       int64         // records read so far (every tenant)
	Total         int64         // offsets in the range: an upper bound of Records
	Elapsed       time.Duration // since the read started
	RecordsPerSec float64
	ETA           time.Duration // of the read phase; 0 when unknown
}

// ReplayReport is what Replay found. Its JSON form is the machine output of
// `companyos replay --json` and the payload of a signed report.
type ReplayReport struct {
	Version        int              `json:"version"` // 1
	Topic          string           `json:"topic"`
	Cluster        string           `json:"cluster"`
	Tenant         string           `json:"tenant,omitempty"` // "" = every tenant
	KeyIDs         []string         `json:"keyids"`           // receipt keys signatures were checked against
	StartedAt      time.Time        `json:"started_at"`
	FinishedAt     time.Time        `json:"finished_at"`
	ElapsedSeconds float64          `json:"elapsed_seconds"`
	Partitions     []PartitionRange `json:"partitions"`
	// Partial is set when some partition was read from after its log
	// start: chains are then anchored at the first receipt seen.
	Partial bool `json:"partial"`

	// Seconds per step: shadow schema creation and migration, reading
	// (fetch, verify, chain check, rebuild: ReadSeconds), and the diff.
	SetupSeconds float64 `json:"setup_seconds"`
	DiffSeconds  float64 `json:"diff_seconds"`

	Records       int64   `json:"records_read"`     // committed records read in the range, every tenant
	Selected      int64   `json:"records_selected"` // of them, the ones of Tenant (all when Tenant is "")
	ReadSeconds   float64 `json:"read_seconds"`     // reading, verifying and rebuilding
	RecordsPerSec float64 `json:"records_per_sec"`  // Records / ReadSeconds
	// SkippedOffsets counts offsets in range that hold no committed record:
	// transaction markers and aborted records (normal with transactional
	// producers: one marker per transaction). Skips lists the first 20
	// stretches.
	SkippedOffsets int64       `json:"skipped_offsets"`
	Skips          []OffsetGap `json:"skips,omitempty"`

	SignaturesVerified int64 `json:"signatures_verified"`
	SignatureFailures  int64 `json:"signature_failures"` // bad signature, or signed by no key of the set
	Malformed          int64 `json:"malformed"`          // not a receipt envelope, or an unreadable payload
	LinksVerified      int64 `json:"links_verified"`     // receipts that extend their tenant's chain
	Duplicates         int64 `json:"duplicates"`         // byte-identical redeliveries of an earlier receipt
	Unchecked          int64 `json:"unchecked"`          // receipts of a tenant after its chain broke
	Tenants            int   `json:"tenants"`

	// Erasures is the lineage of every purge manifest in scope (request →
	// approvals → manifest → shredded keys), checked against the keystore.
	Erasures []ErasureLineage `json:"erasures"`

	// Anchors are the tenants whose chain was anchored at a receipt after
	// seq 1 (partial ranges only).
	Anchors []ChainAnchor `json:"anchors,omitempty"`
	// FirstBroken is the first broken link found, in log order; Broken has
	// the first broken link of every tenant in the order they were found.
	FirstBroken *BrokenLink  `json:"first_broken,omitempty"`
	Broken      []BrokenLink `json:"broken,omitempty"`

	// Diff compares the rebuilt shadow with the live ledger; nil when
	// VerifyOnly.
	Diff *ReplayDiff `json:"diff,omitempty"`
}

// PartitionRange is the range replayed on one partition.
type PartitionRange struct {
	Partition int32 `json:"partition"`
	From      int64 `json:"from"` // first offset read
	To        int64 `json:"to"`   // exclusive
	// DiffTo is the exclusive end of the diffed part: To, or the live
	// ledger's position when that is lower (records beyond are pending).
	DiffTo int64 `json:"diff_to"`
	// LiveNext is the live ledger's stored position when the replay
	// started; -1 when it has none for the partition.
	LiveNext     int64 `json:"live_next"`
	FromLogStart bool  `json:"from_log_start"`
}

// OffsetGap is a stretch [From, To) of a partition with no committed
// record.
type OffsetGap struct {
	Partition int32 `json:"partition"`
	From      int64 `json:"from"`
	To        int64 `json:"to"`
}

// ChainAnchor is where a partial replay picked up a tenant's chain: the
// first receipt seen has seq Seq+1 and prev_hash PrevHash.
type ChainAnchor struct {
	Tenant    string `json:"tenant"`
	Seq       int64  `json:"seq"`
	PrevHash  string `json:"prev_hash"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

// BrokenLink is the first receipt of a tenant that does not verify.
type BrokenLink struct {
	Tenant    string `json:"tenant"`
	Seq       int64  `json:"seq"` // 0 when the payload could not be read
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	Kind      string `json:"kind"` // BrokenSignature, BrokenMalformed, BrokenChain or BrokenTenantKey
	Reason    string `json:"reason"`
}

// ReplayDiff is the comparison of the shadow with the live ledger.
type ReplayDiff struct {
	Shadow string `json:"shadow_schema"`
	Kept   bool   `json:"shadow_kept"`
	Live   string `json:"live_schema"`

	Compared int64 `json:"compared"`  // receipts rebuilt in the shadow
	LiveRows int64 `json:"live_rows"` // live receipts in scope
	Missing  int64 `json:"missing"`   // in the log, not in the live ledger
	Extra    int64 `json:"extra"`     // in the live ledger, not in the log
	Altered  int64 `json:"altered"`   // same id, some column differs
	// The first MaxListed rows of each kind, by partition and offset.
	MissingRows []RowDiff `json:"missing_rows,omitempty"`
	ExtraRows   []RowDiff `json:"extra_rows,omitempty"`
	AlteredRows []RowDiff `json:"altered_rows,omitempty"`
	// Columns lists receipts columns present in only one schema.
	Columns []string `json:"columns,omitempty"`
	// Heads lists differences of tenant heads, Merkle roots, chain anchors
	// and checkpoints.
	Heads         []HeadDiff `json:"heads,omitempty"`
	RootsCompared int        `json:"roots_compared"`
	// MerkleCompared counts the shadow's stored Merkle hashes (every tree
	// node completed by a rebuilt leaf) compared with the live ones;
	// MerkleDiffs the ones that differ (each also listed in Heads, up to
	// MaxListed).
	MerkleCompared     int64 `json:"merkle_compared"`
	MerkleDiffs        int64 `json:"merkle_diffs"`
	CheckpointsChecked int   `json:"checkpoints_checked"`
	CheckpointsSkipped int   `json:"checkpoints_skipped"` // beyond the per-tenant cap
	// Pending counts the tenant's records in range past the live ledger's
	// position: not projected yet, so not diffed.
	Pending int64 `json:"pending"`
}

// RowDiff is one receipt that differs.
type RowDiff struct {
	ID        string `json:"id"`
	Tenant    string `json:"tenant"`
	Seq       int64  `json:"seq"`
	Partition int32  `json:"kafka_partition"`
	Offset    int64  `json:"kafka_offset"`
	// Columns that differ (altered rows), and for each the live and the
	// replayed value as text, cut at 120 characters (bytea as \x hex).
	Columns []string              `json:"columns,omitempty"`
	Changes map[string][2]*string `json:"changes,omitempty"`
}

// HeadDiff is one difference outside the receipts table.
type HeadDiff struct {
	Tenant string `json:"tenant"`
	What   string `json:"what"` // head, status, tree_size, root, anchor, checkpoint
	Live   string `json:"live"`
	Replay string `json:"replay"`
}

// Verified reports whether every selected envelope verified and every chain
// held.
func (r *ReplayReport) Verified() bool {
	return r.SignatureFailures == 0 && r.Malformed == 0 && len(r.Broken) == 0
}

// Empty reports whether the diff found no difference.
func (d *ReplayDiff) Empty() bool {
	return d.Missing == 0 && d.Extra == 0 && d.Altered == 0 && len(d.Columns) == 0 && len(d.Heads) == 0 && d.MerkleDiffs == 0
}

// OK reports whether the replay verified and found no difference.
func (r *ReplayReport) OK() bool {
	return r.Verified() && (r.Diff == nil || r.Diff.Empty()) && r.ErasuresComplete()
}

// ErasuresComplete reports whether every erasure lineage checked out.
func (r *ReplayReport) ErasuresComplete() bool {
	for _, e := range r.Erasures {
		if !e.Complete {
			return false
		}
	}
	return true
}

// maxCheckpointsPerTenant bounds the checkpoints whose roots are recomputed
// per tenant (the newest in range): a ledger signs one every interval.
const maxCheckpointsPerTenant = 1000

// Replay reads the range, verifies it, rebuilds it into a shadow schema and
// diffs it with the live ledger (see the comment at the top of replay.go).
// A nil error means the audit ran to completion; what it found is in the
// report (Verified, Diff). An error means it could not complete (Kafka,
// Postgres, invalid configuration, ctx).
func Replay(ctx context.Context, cfg ReplayConfig) (*ReplayReport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxListed <= 0 {
		cfg.MaxListed = 100
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 100 * time.Millisecond
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &replayer{cfg: cfg, tenants: map[string]*replayTenant{}, shadowSeen: map[string]bool{}, shadowSkip: map[string]string{},
		shadowAnchor: map[string]int64{}}
	r.rep = &ReplayReport{Version: 1, Topic: events.TopicEvents, Tenant: cfg.Tenant, StartedAt: time.Now().UTC()}
	for _, k := range cfg.Keys.Keys {
		r.rep.KeyIDs = append(r.rep.KeyIDs, k.KeyID)
	}
	err := r.run(ctx)
	if err == nil && !cfg.VerifyOnly {
		r.rep.Erasures, err = r.erasureLineages(ctx)
	}
	r.rep.FinishedAt = time.Now().UTC()
	r.rep.ElapsedSeconds = r.rep.FinishedAt.Sub(r.rep.StartedAt).Seconds()
	if err != nil {
		return nil, err
	}
	r.progress("done")
	return r.rep, nil
}

type replayer struct {
	cfg    ReplayConfig
	rep    *ReplayReport
	live   string // live schema
	shadow string // shadow schema; "" when VerifyOnly

	parser *Projector // parses and verifies; never writes
	sp     *Projector // writes the shadow; nil when VerifyOnly
	spool  *pgxpool.Pool

	ranges  []PartitionRange
	until   map[int32]int64
	diffTo  map[int32]int64
	partial map[int32]bool

	tenants      map[string]*replayTenant
	shadowSeen   map[string]bool   // tenants the shadow has seen a record of
	shadowSkip   map[string]string // tenants the shadow cannot rebuild, and why
	shadowAnchor map[string]int64  // tree size the shadow was seeded with, per tenant

	readStart time.Time
	read      atomic.Int64
	total     int64
	skipMu    sync.Mutex // guards rep.SkippedOffsets and rep.Skips (one fetcher per partition)
}

// replayTenant is the verification state of one tenant's chain.
type replayTenant struct {
	started bool
	chain   events.Chain
	base    int64      // seq of hashes[0]
	hashes  [][32]byte // payload SHA-256 of every receipt since the anchor, for duplicates
	broken  bool
}

func (r *replayer) run(ctx context.Context) error {
	if err := r.liveSchema(ctx); err != nil {
		return err
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(r.cfg.Brokers...)}, r.cfg.ClientOpts...)...)
	if err != nil {
		return fmt.Errorf("ledger: replay: kafka client: %w", err)
	}
	defer cl.Close()
	if err := r.resolve(ctx, cl); err != nil {
		return err
	}

	_, key, err := ed25519.GenerateKey(rand.Reader) // the shadow never signs: any key satisfies NewProjector
	if err != nil {
		return fmt.Errorf("ledger: replay: %w", err)
	}
	quiet := slog.New(slog.DiscardHandler)
	keys := r.cfg.Keys
	r.parser, err = NewProjector(Config{Brokers: r.cfg.Brokers, Pool: r.cfg.Pool, Signer: CheckpointSigner{Name: "companyos-replay", Key: key},
		Keys: &keys, Logger: quiet})
	if err != nil {
		return fmt.Errorf("ledger: replay: %w", err)
	}
	if !r.cfg.VerifyOnly {
		start := time.Now()
		drop, err := r.createShadow(ctx, key, quiet)
		r.rep.SetupSeconds = time.Since(start).Seconds()
		if drop != nil {
			defer drop()
		}
		if err != nil {
			return err
		}
	}

	stopProgress := r.startProgress()
	r.readStart = time.Now()
	err = r.readRange(ctx, cl)
	readTime := time.Since(r.readStart)
	stopProgress()
	if err != nil {
		return err
	}
	r.rep.Records = r.read.Load()
	r.rep.ReadSeconds = readTime.Seconds()
	if s := readTime.Seconds(); s > 0 {
		r.rep.RecordsPerSec = float64(r.rep.Records) / s
	}
	r.rep.Tenants = len(r.tenants)
	if r.rep.Broken != nil {
		r.rep.FirstBroken = &r.rep.Broken[0]
	}
	if r.cfg.VerifyOnly {
		return nil
	}
	r.progress("diff")
	start := time.Now()
	err = r.diff(ctx)
	r.rep.DiffSeconds = time.Since(start).Seconds()
	return err
}

// liveSchema finds the schema the live pool resolves "receipts" in.
func (r *replayer) liveSchema(ctx context.Context) error {
	var schema *string
	if err := r.cfg.Pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return fmt.Errorf("ledger: replay: live schema: %w", err)
	}
	if schema == nil {
		return fmt.Errorf("ledger: replay: live schema: empty search_path: %w", ErrNotMigrated)
	}
	r.live = *schema
	var ok bool
	if err := r.cfg.Pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", r.liveTable("receipts")).Scan(&ok); err != nil {
		return fmt.Errorf("ledger: replay: live schema: %w", err)
	}
	if !ok {
		return fmt.Errorf("ledger: replay: no receipts table in schema %s: %w", r.live, ErrNotMigrated)
	}
	return nil
}

func (r *replayer) liveTable(t string) string   { return pgx.Identifier{r.live, t}.Sanitize() }
func (r *replayer) shadowTable(t string) string { return pgx.Identifier{r.shadow, t}.Sanitize() }

// resolve turns the bounds into per-partition offsets and reads the live
// ledger's positions.
func (r *replayer) resolve(ctx context.Context, cl *kgo.Client) error {
	adm := kadm.NewClient(cl)
	topic := events.TopicEvents
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		return fmt.Errorf("ledger: replay: kafka metadata: %w", err)
	}
	r.rep.Cluster = md.Cluster
	td, ok := md.Topics[topic]
	if !ok || td.Err != nil {
		return fmt.Errorf("ledger: replay: topic %s: %v", topic, td.Err)
	}
	list := func(what string, f func() (kadm.ListedOffsets, error)) (map[int32]int64, error) {
		l, err := f()
		if err != nil {
			return nil, fmt.Errorf("ledger: replay: list %s offsets: %w", what, err)
		}
		out := map[int32]int64{}
		var lerr error
		l.Each(func(o kadm.ListedOffset) {
			if o.Topic != topic {
				return
			}
			if o.Err != nil {
				lerr = fmt.Errorf("ledger: replay: %s offset of %s/%d: %w", what, topic, o.Partition, o.Err)
			}
			out[o.Partition] = o.Offset
		})
		return out, lerr
	}
	starts, err := list("start", func() (kadm.ListedOffsets, error) { return adm.ListStartOffsets(ctx, topic) })
	if err != nil {
		return err
	}
	stable, err := list("stable", func() (kadm.ListedOffsets, error) { return adm.ListCommittedOffsets(ctx, topic) })
	if err != nil {
		return err
	}
	var fromTime, toTime map[int32]int64
	if t := r.cfg.From.Time; !t.IsZero() {
		if fromTime, err = list("from-time", func() (kadm.ListedOffsets, error) { return adm.ListOffsetsAfterMilli(ctx, t.UnixMilli(), topic) }); err != nil {
			return err
		}
	}
	if t := r.cfg.To.Time; !t.IsZero() {
		if toTime, err = list("to-time", func() (kadm.ListedOffsets, error) { return adm.ListOffsetsAfterMilli(ctx, t.UnixMilli(), topic) }); err != nil {
			return err
		}
	}
	for p := range r.cfg.From.Offsets {
		if _, ok := td.Partitions[p]; !ok && p != AllPartitions {
			return fmt.Errorf("ledger: replay: from: topic %s has no partition %d", topic, p)
		}
	}
	for p := range r.cfg.To.Offsets {
		if _, ok := td.Partitions[p]; !ok && p != AllPartitions {
			return fmt.Errorf("ledger: replay: to: topic %s has no partition %d", topic, p)
		}
	}

	live, err := r.livePositions(ctx)
	if err != nil {
		return err
	}
	r.until, r.diffTo, r.partial = map[int32]int64{}, map[int32]int64{}, map[int32]bool{}
	for _, p := range slices.Sorted(maps.Keys(td.Partitions)) {
		start, end := starts[p], stable[p]
		from, until := start, end
		if o, ok := r.cfg.From.offset(p); ok {
			from = max(o, start)
		}
		if o, ok := fromTime[p]; ok && o >= 0 {
			from = max(o, start)
		} else if fromTime != nil {
			from = end
		}
		if o, ok := r.cfg.To.offset(p); ok {
			until = min(o, end)
		}
		if o, ok := toTime[p]; ok && o >= 0 {
			until = min(o, end)
		}
		from = min(from, until)
		pr := PartitionRange{Partition: p, From: from, To: until, LiveNext: -1, FromLogStart: from <= start}
		diffTo := from
		if n, ok := live[p]; ok {
			pr.LiveNext = n
			diffTo = min(max(n, from), until)
		}
		pr.DiffTo = diffTo
		r.ranges = append(r.ranges, pr)
		r.until[p], r.diffTo[p], r.partial[p] = until, diffTo, !pr.FromLogStart
		r.total += until - from
		if !pr.FromLogStart {
			r.rep.Partial = true
		}
	}
	r.rep.Partitions = r.ranges
	return nil
}

// livePositions reads the live ledger's stored positions, refusing those of
// another Kafka cluster: their offsets would name other records.
func (r *replayer) livePositions(ctx context.Context) (map[int32]int64, error) {
	rows, err := r.cfg.Pool.Query(ctx, "SELECT cluster_id, partition, next_offset FROM "+r.liveTable("ledger_positions")+" WHERE topic = $1", events.TopicEvents)
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: live positions: %w", err)
	}
	defer rows.Close()
	out := map[int32]int64{}
	for rows.Next() {
		var cluster string
		var p int32
		var next int64
		if err := rows.Scan(&cluster, &p, &next); err != nil {
			return nil, fmt.Errorf("ledger: replay: live positions: %w", err)
		}
		if cluster != r.rep.Cluster {
			return nil, fmt.Errorf("ledger: replay: %w: the live ledger's positions belong to Kafka cluster %q, connected to %q",
				ErrClusterMismatch, cluster, r.rep.Cluster)
		}
		out[p] = next
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger: replay: live positions: %w", err)
	}
	return out, nil
}

// createShadow creates the shadow schema, migrates it and builds the shadow
// projector over a pool whose connections resolve names in it. drop (when
// not nil) removes everything again.
func (r *replayer) createShadow(ctx context.Context, key ed25519.PrivateKey, log *slog.Logger) (drop func(), err error) {
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, fmt.Errorf("ledger: replay: %w", err)
	}
	r.shadow = "replay_" + r.rep.StartedAt.Format("20060102t150405") + "_" + hex.EncodeToString(suffix[:])
	if _, err := r.cfg.Pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{r.shadow}.Sanitize()); err != nil {
		return nil, fmt.Errorf("ledger: replay: create shadow schema %s: %w", r.shadow, err)
	}
	drop = func() {
		if r.spool != nil {
			r.spool.Close()
		}
		if r.cfg.KeepShadow {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := r.cfg.Pool.Exec(dctx, "DROP SCHEMA "+pgx.Identifier{r.shadow}.Sanitize()+" CASCADE"); err != nil {
			r.cfg.Logger.Warn("ledger: replay: drop shadow schema", "schema", r.shadow, "err", err)
		}
	}
	pc := r.cfg.Pool.Config()
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	pc.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{r.shadow}.Sanitize()
	// The shadow is scratch: nothing in it must survive a crash.
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	pc.MaxConns = 4
	r.spool, err = pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return drop, fmt.Errorf("ledger: replay: shadow pool: %w", err)
	}
	if err := Migrate(ctx, r.spool); err != nil {
		return drop, fmt.Errorf("ledger: replay: migrate shadow schema %s: %w", r.shadow, err)
	}
	// Scratch tables, written once, read once and dropped: no WAL
	// (UNLOGGED; a kept shadow is emptied by a server crash), and no
	// autovacuum competing with the rebuild (the diff runs ANALYZE itself).
	if _, err := r.spool.Exec(ctx, `ALTER TABLE receipts SET UNLOGGED;
		ALTER TABLE merkle_hashes SET UNLOGGED;
		ALTER TABLE tenant_heads SET UNLOGGED;
		ALTER TABLE ledger_positions SET UNLOGGED;
		ALTER TABLE receipts SET (autovacuum_enabled = false, toast.autovacuum_enabled = false);
		ALTER TABLE merkle_hashes SET (autovacuum_enabled = false)`); err != nil {
		return drop, fmt.Errorf("ledger: replay: shadow schema %s: %w", r.shadow, err)
	}
	keys := r.cfg.Keys
	r.sp, err = NewProjector(Config{Brokers: r.cfg.Brokers, Pool: r.spool, Signer: CheckpointSigner{Name: "companyos-replay", Key: key},
		Keys: &keys, Logger: log})
	if err != nil {
		return drop, fmt.Errorf("ledger: replay: %w", err)
	}
	// What Projector.load would set up: no heads (a full range starts at
	// genesis; partial ranges seed them at the anchors), positions at the
	// range starts, and the cluster whose offsets they are.
	r.sp.heads, r.sp.positions, r.sp.lags = map[string]*tenantHead{}, map[int32]int64{}, map[int32]int64{}
	r.sp.clusterID = r.rep.Cluster
	for _, pr := range r.ranges {
		r.sp.positions[pr.Partition] = pr.From
	}
	return drop, nil
}

var errRangeRead = errors.New("ledger: replay: range read")

// readRange reads every partition from its start to its bound, in a
// three-stage pipeline: fetching | parsing and verifying signatures on every
// core (Projector.parseAll) | checking chains and writing the shadow, one
// batch at a time, so each partition is consumed strictly in log order while
// the next batches are fetched and verified.
//
// Each partition is fetched by its own events.Follow, one partition per
// fetch request: a request for several partitions can come back with some
// of them empty once the response size limit is reached, and Follow takes an
// empty partition below its stable offset for an aborted transaction and
// skips to that offset. Offsets passed without a committed record
// (transaction markers, aborted records) are counted in the report.
func (r *replayer) readRange(ctx context.Context, cl *kgo.Client) error {
	type job struct {
		part int32
		recs []*kgo.Record
		ps   []parsed
		next int64
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	fetched, verified := make(chan job, 2), make(chan job, 2)
	go func() {
		defer close(verified)
		for j := range fetched {
			if fctx.Err() != nil {
				continue // drain
			}
			j.ps = r.parser.parseAll(j.recs)
			select {
			case verified <- j:
			case <-fctx.Done():
			}
		}
	}()
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for j := range verified {
			if werr != nil {
				continue // drain
			}
			if werr = r.consume(fctx, j.part, j.ps, j.next); werr != nil {
				stop()
			}
		}
	}()

	var (
		mu   sync.Mutex
		ferr error
		wg   sync.WaitGroup
	)
	for _, pr := range r.ranges {
		if pr.From >= pr.To {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			part, until, pos := pr.Partition, pr.To, pr.From
			err := events.Follow(fctx, cl, events.TopicEvents, map[int32]int64{part: pos}, r.cfg.MaxWait, func(b events.Batch) error {
				recs := b.Records
				recs = recs[:sort.Search(len(recs), func(i int) bool { return recs[i].Offset >= until })]
				next := min(b.Next, until)
				// Offsets passed without a committed record.
				at := pos
				for _, rec := range recs {
					r.skip(part, at, rec.Offset)
					at = rec.Offset + 1
				}
				r.skip(part, at, next)
				pos = max(pos, next)
				r.read.Add(int64(len(recs)))
				if r.cfg.Tenant != "" {
					sel := make([]*kgo.Record, 0, len(recs))
					for _, rec := range recs {
						if string(rec.Key) == r.cfg.Tenant {
							sel = append(sel, rec)
						}
					}
					recs = sel
				}
				if len(recs) > 0 {
					select {
					case fetched <- job{part: part, recs: recs, next: next}:
					case <-fctx.Done():
						return fctx.Err()
					}
				}
				if pos >= until {
					return errRangeRead
				}
				return nil
			})
			if err != nil && !errors.Is(err, errRangeRead) {
				mu.Lock()
				if ferr == nil {
					ferr = fmt.Errorf("ledger: replay: read %s/%d: %w", events.TopicEvents, part, err)
				}
				mu.Unlock()
				stop()
			}
		}()
	}
	wg.Wait()
	close(fetched)
	<-done
	if werr != nil {
		return werr
	}
	return ferr
}

// skip records offsets [from, to) of partition passed without a committed
// record.
func (r *replayer) skip(part int32, from, to int64) {
	if to <= from {
		return
	}
	r.skipMu.Lock()
	defer r.skipMu.Unlock()
	r.rep.SkippedOffsets += to - from
	if len(r.rep.Skips) < 20 {
		r.rep.Skips = append(r.rep.Skips, OffsetGap{Partition: part, From: from, To: to})
	}
}

// consume checks one fetched batch's chains, then writes it to the shadow.
func (r *replayer) consume(ctx context.Context, part int32, ps []parsed, next int64) error {
	r.rep.Selected += int64(len(ps))
	for i := range ps {
		if err := r.check(ctx, part, &ps[i]); err != nil {
			return err
		}
	}
	if r.sp == nil {
		return nil
	}
	return r.applyShadow(ctx, part, ps, next)
}

func (r *replayer) tenant(t string) *replayTenant {
	s := r.tenants[t]
	if s == nil {
		s = &replayTenant{}
		r.tenants[t] = s
	}
	return s
}

func (r *replayer) breakLink(t *replayTenant, tenant string, x *parsed, kind, reason string) {
	t.broken = true
	r.rep.Broken = append(r.rep.Broken, BrokenLink{Tenant: tenant, Seq: x.r.Seq, Partition: x.rec.Partition, Offset: x.rec.Offset, Kind: kind, Reason: reason})
}

// check verifies one record's signature result and chain link, in log order.
func (r *replayer) check(ctx context.Context, part int32, x *parsed) error {
	tenant := x.tenant
	t := r.tenant(tenant)
	if t.broken {
		r.rep.Unchecked++
		return nil
	}
	if x.err != nil {
		kind := BrokenMalformed
		if errors.Is(x.err, events.ErrBadSignature) || errors.Is(x.err, events.ErrUnknownKey) {
			kind = BrokenSignature
			r.rep.SignatureFailures++
		} else {
			r.rep.Malformed++
		}
		r.breakLink(t, tenant, x, kind, x.err.Error())
		return nil
	}
	r.rep.SignaturesVerified++
	if r.cfg.observe != nil {
		r.cfg.observe(tenant, x.r.Seq, part, x.rec.Offset)
	}
	if string(x.rec.Key) != tenant {
		r.breakLink(t, tenant, x, BrokenTenantKey, fmt.Sprintf("record key %q, payload tenant %q", x.rec.Key, tenant))
		return nil
	}
	if x.r.Seq < 1 {
		r.breakLink(t, tenant, x, BrokenChain, fmt.Sprintf("%v: tenant %s: seq %d", events.ErrChainBroken, tenant, x.r.Seq))
		return nil
	}
	seq := x.r.Seq
	if !t.started {
		t.started = true
		t.chain = events.NewChain()
		if r.partial[part] && seq > 1 {
			t.chain = events.Chain{Seq: uint64(seq - 1), Head: x.r.PrevHash}
			r.rep.Anchors = append(r.rep.Anchors, ChainAnchor{Tenant: tenant, Seq: seq - 1, PrevHash: x.r.PrevHash, Partition: part, Offset: x.rec.Offset})
		}
		t.base = int64(t.chain.Seq) + 1
	}
	if seq <= int64(t.chain.Seq) {
		// A redelivery (identical bytes) or a fork.
		var same bool
		var known string
		if seq >= t.base {
			same = t.hashes[seq-t.base] == sha256.Sum256(x.payload)
			known = "sha256:" + hex.EncodeToString(t.hashes[seq-t.base][:])
		} else {
			// Before the anchor of a partial range: only the live
			// ledger knows it.
			h, err := r.liveHash(ctx, tenant, seq)
			if err != nil {
				return err
			}
			same, known = h == events.HashPayload(x.payload), h
			if known == "" {
				known = "nothing (before the replayed range, not in the live ledger)"
			}
		}
		if same {
			r.rep.Duplicates++
			return nil
		}
		r.breakLink(t, tenant, x, BrokenChain, fmt.Sprintf("%v: tenant %s: fork at seq %d: payload %s, chain has %s",
			events.ErrChainBroken, tenant, seq, events.HashPayload(x.payload), known))
		return nil
	}
	if err := t.chain.Append(events.Receipt{Tenant: tenant, Seq: uint64(seq), PrevHash: x.r.PrevHash}, x.payload); err != nil {
		r.breakLink(t, tenant, x, BrokenChain, err.Error())
		return nil
	}
	// The new head is "sha256:" + hex of the payload's digest: keep its 32
	// bytes (decoding 64 hex digits is cheaper than hashing the payload again).
	var sum [32]byte
	if _, err := hex.Decode(sum[:], []byte(t.chain.Head[len("sha256:"):])); err != nil {
		return fmt.Errorf("ledger: replay: chain head %q: %w", t.chain.Head, err)
	}
	t.hashes = append(t.hashes, sum)
	r.rep.LinksVerified++
	return nil
}

// liveHash returns the live ledger's payload_hash of tenant's seq ("" when
// it has none).
func (r *replayer) liveHash(ctx context.Context, tenant string, seq int64) (string, error) {
	var h string
	err := r.cfg.Pool.QueryRow(ctx, "SELECT payload_hash FROM "+r.liveTable("receipts")+" WHERE tenant = $1 AND seq = $2", tenant, seq).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ledger: replay: live receipt %s seq %d: %w", tenant, seq, err)
	}
	return h, nil
}

// applyShadow hands the diffed part of a batch to the projector's write
// path, after seeding the heads of tenants a partial range starts mid-chain.
func (r *replayer) applyShadow(ctx context.Context, part int32, ps []parsed, next int64) error {
	end := r.diffTo[part]
	keep := make([]parsed, 0, len(ps))
	for i := range ps {
		x := &ps[i]
		if x.rec.Offset >= end {
			r.pendingAdd(ps[i:])
			break
		}
		if r.cfg.Tenant != "" && x.tenant != r.cfg.Tenant {
			continue // keyed to the tenant but not its receipt: verification reports it
		}
		if _, skip := r.shadowSkip[x.tenant]; skip {
			continue
		}
		if !r.shadowSeen[x.tenant] {
			r.shadowSeen[x.tenant] = true
			if r.partial[part] && x.err == nil && x.r.Seq > 1 {
				if err := r.seedShadow(ctx, x.tenant, x.r.Seq-1, x.r.PrevHash); err != nil {
					if !errors.Is(err, errNoPrefix) {
						return err
					}
					r.shadowSkip[x.tenant] = err.Error()
					continue
				}
			}
		}
		if h := r.sp.heads[x.tenant]; h != nil && x.err == nil && h.broken == "" && x.r.Seq <= h.seq && r.seededBelow(x.tenant, x.r.Seq) {
			// A redelivery of a receipt before the anchor: the live
			// projector compared it with its stored copy; so do we.
			lh, err := r.liveHash(ctx, x.tenant, x.r.Seq)
			if err != nil {
				return err
			}
			if lh == events.HashPayload(x.payload) {
				continue
			}
		}
		keep = append(keep, *x)
	}
	if len(keep) == 0 {
		return nil
	}
	if err := r.sp.apply(events.Batch{Partition: part, Next: min(next, end)}, keep); err != nil {
		return fmt.Errorf("ledger: replay: shadow: %w", err)
	}
	return nil
}

func (r *replayer) pendingAdd(ps []parsed) {
	if r.rep.Diff == nil {
		r.rep.Diff = &ReplayDiff{}
	}
	for i := range ps {
		if r.cfg.Tenant == "" || ps[i].tenant == r.cfg.Tenant {
			r.rep.Diff.Pending++
		}
	}
}

// seededBelow reports whether seq precedes tenant's shadow anchor.
func (r *replayer) seededBelow(tenant string, seq int64) bool {
	return seq <= r.shadowAnchor[tenant]
}

var errNoPrefix = errors.New("ledger: replay: live ledger lacks the Merkle hashes before the anchor")

// seedShadow starts tenant's shadow chain after seq anchor with prev_hash
// prev, copying from the live ledger the stored hashes of the complete
// subtrees left of leaf anchor: the only ones appending later leaves (and
// any tree hash of a larger size) reads.
func (r *replayer) seedShadow(ctx context.Context, tenant string, anchor int64, prev string) error {
	idx := frontier(anchor)
	hs, err := readHashes(ctx, r.cfg.Pool, tenant, idx)
	if err != nil {
		return fmt.Errorf("ledger: replay: live Merkle hashes of %s: %w", tenant, err)
	}
	if len(hs) != len(idx) {
		return fmt.Errorf("%w (tenant %s, seq %d)", errNoPrefix, tenant, anchor)
	}
	rows := make([][]any, 0, len(idx))
	for _, i := range idx {
		h := hs[i]
		rows = append(rows, []any{tenant, i, h[:]})
	}
	if _, err := r.spool.CopyFrom(ctx, pgx.Identifier{"merkle_hashes"}, []string{"tenant", "idx", "hash"}, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("ledger: replay: seed shadow tree of %s: %w", tenant, err)
	}
	r.sp.heads[tenant] = &tenantHead{seq: anchor, hash: prev, size: anchor}
	r.shadowAnchor[tenant] = anchor
	return nil
}

// frontier returns the stored-hash indexes of the complete subtrees that
// make up the first n leaves (one per set bit of n).
func frontier(n int64) []int64 {
	var out []int64
	for l := 0; n>>l > 0; l++ {
		if (n>>l)&1 == 1 {
			out = append(out, tlog.StoredHashIndex(l, (n>>l)-1))
		}
	}
	return out
}

func (r *replayer) progress(phase string) {
	if r.cfg.Progress == nil {
		return
	}
	p := ReplayProgress{Phase: phase, Records: r.read.Load(), Total: r.total}
	if !r.readStart.IsZero() {
		p.Elapsed = time.Since(r.readStart)
	}
	if s := p.Elapsed.Seconds(); s > 0 {
		p.RecordsPerSec = float64(p.Records) / s
		if phase == "read" && p.RecordsPerSec > 0 && p.Total > p.Records {
			p.ETA = time.Duration(float64(p.Total-p.Records) / p.RecordsPerSec * float64(time.Second))
		}
	}
	r.cfg.Progress(p)
}

func (r *replayer) startProgress() (stop func()) {
	r.progress("read")
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.progress("read")
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
