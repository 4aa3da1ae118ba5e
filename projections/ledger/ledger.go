package ledger

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
)

// Sentinel errors, mapped to HTTP statuses only in api.go.
var (
	ErrNotFound     = errors.New("ledger: not found")
	ErrInvalidRange = errors.New("ledger: invalid tree size")
)

// CheckpointSigner signs checkpoints: an Ed25519 key and the note key name
// ("companyos-ledger"). It is deliberately not the receipt signing key's
// format: auditors verify checkpoints with standard sumdb/note tooling.
type CheckpointSigner struct {
	Name string
	Key  ed25519.PrivateKey
}

// Checkpoint is a signed tree head of one tenant's Merkle log.
type Checkpoint struct {
	Tenant    string    `json:"tenant"`
	TreeSize  int64     `json:"tree_size"`
	RootHash  tlog.Hash `json:"root_hash"` // base64 in JSON
	Note      string    `json:"note"`      // the signed note, verifiable with note.Open
	CreatedAt time.Time `json:"created_at"`
}

// CheckpointText is the signed text of a checkpoint: an origin line naming
// the tenant's log, then tlog.FormatTree's size and root lines.
func CheckpointText(tenant string, size int64, root tlog.Hash) string {
	return fmt.Sprintf("companyos/%s\n%d\n%s\n", tenant, size, root)
}

// ParseCheckpointText is the inverse of CheckpointText.
func ParseCheckpointText(text string) (tenant string, size int64, root tlog.Hash, err error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || !strings.HasPrefix(lines[0], "companyos/") {
		return "", 0, tlog.Hash{}, errors.New("ledger: malformed checkpoint text")
	}
	size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return "", 0, tlog.Hash{}, errors.New("ledger: malformed checkpoint size")
	}
	root, err = tlog.ParseHash(lines[2])
	if err != nil {
		return "", 0, tlog.Hash{}, errors.New("ledger: malformed checkpoint root")
	}
	return strings.TrimPrefix(lines[0], "companyos/"), size, root, nil
}

// Ledger reads the ledger tables and signs checkpoints. It is safe for
// concurrent use and needs no running projector (API-only instances).
type Ledger struct {
	pool     *pgxpool.Pool
	signer   note.Signer
	verifier string
}

// NewLedger builds a ledger over pool with the checkpoint signer.
func NewLedger(pool *pgxpool.Pool, s CheckpointSigner) (*Ledger, error) {
	if pool == nil {
		return nil, errors.New("ledger: pool required")
	}
	if len(s.Key) != ed25519.PrivateKeySize || s.Name == "" {
		return nil, errors.New("ledger: checkpoint signer needs a name and an Ed25519 private key")
	}
	vkey, err := note.NewEd25519VerifierKey(s.Name, s.Key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoint verifier key: %w", err)
	}
	// vkey is name+hash+key; the signer key is PRIVATE+KEY+name+hash+(alg||seed).
	parts := strings.SplitN(vkey, "+", 3)
	skey := "PRIVATE+KEY+" + parts[0] + "+" + parts[1] + "+" + base64.StdEncoding.EncodeToString(append([]byte{1}, s.Key.Seed()...))
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoint signer %q: %w", s.Name, err)
	}
	return &Ledger{pool: pool, signer: signer, verifier: vkey}, nil
}

// VerifierKey is the checkpoint verifier key in note.NewVerifier format
// ("name+hash+base64"), for auditors verifying offline.
func (l *Ledger) VerifierKey() string { return l.verifier }

// hashReader reads stored hashes of one tenant through q (pool or tx).
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readHashes(ctx context.Context, q querier, tenant string, indexes []int64) (map[int64]tlog.Hash, error) {
	rows, err := q.Query(ctx, "SELECT idx, hash FROM merkle_hashes WHERE tenant = $1 AND idx = ANY($2)", tenant, indexes)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[int64]tlog.Hash, len(indexes))
	for rows.Next() {
		var idx int64
		var h []byte
		if err := rows.Scan(&idx, &h); err != nil {
			return nil, err
		}
		if len(h) != tlog.HashSize {
			return nil, fmt.Errorf("ledger: tenant %s stored hash %d has %d bytes", tenant, idx, len(h))
		}
		out[idx] = tlog.Hash(h)
	}
	return out, rows.Err()
}

// HashReader returns a tlog.HashReader over tenant's committed stored hashes.
func (l *Ledger) HashReader(ctx context.Context, tenant string) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		m, err := readHashes(ctx, l.pool, tenant, indexes)
		if err != nil {
			return nil, err
		}
		out := make([]tlog.Hash, len(indexes))
		for i, idx := range indexes {
			h, ok := m[idx]
			if !ok {
				return nil, fmt.Errorf("ledger: tenant %s: stored hash %d missing", tenant, idx)
			}
			out[i] = h
		}
		return out, nil
	})
}

// Head is a tenant's chain head as the ledger applied it.
type Head struct {
	Tenant       string `json:"tenant"`
	Seq          int64  `json:"seq"`
	HeadHash     string `json:"head_hash"`
	TreeSize     int64  `json:"tree_size"`
	Status       string `json:"status"`
	BrokenReason string `json:"broken_reason,omitempty"`
}

// Head returns tenant's head, or ErrNotFound.
func (l *Ledger) Head(ctx context.Context, tenant string) (Head, error) {
	h := Head{Tenant: tenant}
	var reason *string
	err := l.pool.QueryRow(ctx, "SELECT seq, head_hash, tree_size, status, broken_reason FROM tenant_heads WHERE tenant = $1", tenant).
		Scan(&h.Seq, &h.HeadHash, &h.TreeSize, &h.Status, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return Head{}, fmt.Errorf("%w: tenant %s", ErrNotFound, tenant)
	}
	if err != nil {
		return Head{}, fmt.Errorf("ledger: head of %s: %w", tenant, err)
	}
	if reason != nil {
		h.BrokenReason = *reason
	}
	return h, nil
}

// LatestCheckpoint returns tenant's largest stored checkpoint, or ErrNotFound.
func (l *Ledger) LatestCheckpoint(ctx context.Context, tenant string) (Checkpoint, error) {
	c := Checkpoint{Tenant: tenant}
	var root []byte
	err := l.pool.QueryRow(ctx, "SELECT tree_size, root_hash, note, created_at FROM checkpoints WHERE tenant = $1 ORDER BY tree_size DESC LIMIT 1", tenant).
		Scan(&c.TreeSize, &root, &c.Note, &c.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, fmt.Errorf("%w: no checkpoint for tenant %s", ErrNotFound, tenant)
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint of %s: %w", tenant, err)
	}
	c.RootHash = tlog.Hash(root)
	return c, nil
}

// Checkpoint signs and stores a checkpoint of tenant's current tree, unless
// the latest stored one already covers it, and returns the latest. Stored
// hashes never change, so any committed tree size yields a stable root.
func (l *Ledger) Checkpoint(ctx context.Context, tenant string) (Checkpoint, error) {
	head, err := l.Head(ctx, tenant)
	if err != nil {
		return Checkpoint{}, err
	}
	latest, err := l.LatestCheckpoint(ctx, tenant)
	if err == nil && latest.TreeSize >= head.TreeSize {
		return latest, nil
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Checkpoint{}, err
	}
	if head.TreeSize == 0 {
		return Checkpoint{}, fmt.Errorf("%w: tenant %s has an empty tree", ErrNotFound, tenant)
	}
	root, err := tlog.TreeHash(head.TreeSize, l.HashReader(ctx, tenant))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: tree hash of %s at %d: %w", tenant, head.TreeSize, err)
	}
	signed, err := note.Sign(&note.Note{Text: CheckpointText(tenant, head.TreeSize, root)}, l.signer)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: sign checkpoint: %w", err)
	}
	c := Checkpoint{Tenant: tenant, TreeSize: head.TreeSize, RootHash: root, Note: string(signed)}
	// A concurrent signer may have stored the same size first: keep theirs
	// (same root; the signature differs only if keys differ).
	err = l.pool.QueryRow(ctx, `INSERT INTO checkpoints (tenant, tree_size, root_hash, note) VALUES ($1, $2, $3, $4)
		ON CONFLICT (tenant, tree_size) DO UPDATE SET tenant = EXCLUDED.tenant
		RETURNING note, created_at`, tenant, c.TreeSize, root[:], c.Note).Scan(&c.Note, &c.CreatedAt)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: store checkpoint of %s: %w", tenant, err)
	}
	return c, nil
}

// InclusionProof proves that tenant's receipt seq is leaf seq-1 of the tree
// of size treeSize (which must be ≤ the applied tree size).
func (l *Ledger) InclusionProof(ctx context.Context, tenant string, seq, treeSize int64) (tlog.RecordProof, error) {
	if err := l.checkSize(ctx, tenant, treeSize); err != nil {
		return nil, err
	}
	if seq < 1 || seq > treeSize {
		return nil, fmt.Errorf("%w: seq %d not in a tree of size %d", ErrInvalidRange, seq, treeSize)
	}
	p, err := tlog.ProveRecord(treeSize, seq-1, l.HashReader(ctx, tenant))
	if err != nil {
		return nil, fmt.Errorf("ledger: inclusion proof %s seq %d size %d: %w", tenant, seq, treeSize, err)
	}
	return p, nil
}

// ConsistencyProof proves that tenant's tree of size oldSize is a prefix of
// the tree of size newSize.
func (l *Ledger) ConsistencyProof(ctx context.Context, tenant string, oldSize, newSize int64) (tlog.TreeProof, error) {
	if err := l.checkSize(ctx, tenant, newSize); err != nil {
		return nil, err
	}
	if oldSize < 1 || oldSize > newSize {
		return nil, fmt.Errorf("%w: need 1 ≤ old (%d) ≤ new (%d)", ErrInvalidRange, oldSize, newSize)
	}
	p, err := tlog.ProveTree(newSize, oldSize, l.HashReader(ctx, tenant))
	if err != nil {
		return nil, fmt.Errorf("ledger: consistency proof %s %d→%d: %w", tenant, oldSize, newSize, err)
	}
	return p, nil
}

// TreeHash returns the root of tenant's tree of size n.
func (l *Ledger) TreeHash(ctx context.Context, tenant string, n int64) (tlog.Hash, error) {
	if err := l.checkSize(ctx, tenant, n); err != nil {
		return tlog.Hash{}, err
	}
	return tlog.TreeHash(n, l.HashReader(ctx, tenant))
}

func (l *Ledger) checkSize(ctx context.Context, tenant string, n int64) error {
	head, err := l.Head(ctx, tenant)
	if err != nil {
		return err
	}
	if n < 1 || n > head.TreeSize {
		return fmt.Errorf("%w: tree size %d, tenant %s has %d", ErrInvalidRange, n, tenant, head.TreeSize)
	}
	return nil
}

// Receipt is one stored receipt.
type Receipt struct {
	ID            string    `json:"id"`
	Tenant        string    `json:"tenant"`
	Seq           int64     `json:"seq"`
	Action        string    `json:"action"`
	Actor         string    `json:"actor"`
	Decision      string    `json:"decision"`
	PolicyVersion string    `json:"policy_version"`
	EvidenceHash  string    `json:"evidence_hash"`
	CreatedAt     time.Time `json:"created_at"`
	PrevHash      string    `json:"prev_hash"`
	PayloadHash   string    `json:"payload_hash"`
	CommandID     string    `json:"command_id"`
	Subject       string    `json:"subject"`
	Redactions    []byte    `json:"-"`
	// Envelope is the exact Kafka record value (a DSSE envelope, JSON).
	Envelope       []byte `json:"-"`
	KafkaPartition int32  `json:"kafka_partition"`
	KafkaOffset    int64  `json:"kafka_offset"`
}

const receiptColumns = "id, tenant, seq, action, actor, decision, policy_version, evidence_hash, created_at, prev_hash, payload_hash, command_id, subject, redactions, envelope, kafka_partition, kafka_offset"

func scanReceipt(row pgx.Row) (Receipt, error) {
	var r Receipt
	err := row.Scan(&r.ID, &r.Tenant, &r.Seq, &r.Action, &r.Actor, &r.Decision, &r.PolicyVersion, &r.EvidenceHash, &r.CreatedAt,
		&r.PrevHash, &r.PayloadHash, &r.CommandID, &r.Subject, &r.Redactions, &r.Envelope, &r.KafkaPartition, &r.KafkaOffset)
	return r, err
}

// Receipt returns the receipt with id, or ErrNotFound.
func (l *Ledger) Receipt(ctx context.Context, id string) (Receipt, error) {
	r, err := scanReceipt(l.pool.QueryRow(ctx, "SELECT "+receiptColumns+" FROM receipts WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Receipt{}, fmt.Errorf("%w: receipt %s", ErrNotFound, id)
	}
	if err != nil {
		return Receipt{}, fmt.Errorf("ledger: receipt %s: %w", id, err)
	}
	return r, nil
}

// Filter selects receipts of one tenant for List.
type Filter struct {
	Tenant   string    // required
	From, To time.Time // created_at in [From, To); zero = unbounded
	Actor    string    // optional exact match
	Action   string    // optional exact match
	AfterSeq int64     // keyset cursor: only seq > AfterSeq
	Limit    int       // 1..1000, default 100
}

// List returns receipts matching f in seq order, and whether more follow.
func (l *Ledger) List(ctx context.Context, f Filter) ([]Receipt, bool, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := "SELECT " + receiptColumns + " FROM receipts WHERE tenant = $1 AND seq > $2"
	args := []any{f.Tenant, f.AfterSeq}
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(" AND %s $%d", cond, len(args))
	}
	if !f.From.IsZero() {
		add("created_at >=", f.From)
	}
	if !f.To.IsZero() {
		add("created_at <", f.To)
	}
	if f.Actor != "" {
		add("actor =", f.Actor)
	}
	if f.Action != "" {
		add("action =", f.Action)
	}
	q += fmt.Sprintf(" ORDER BY seq LIMIT %d", f.Limit+1)
	rows, err := l.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("ledger: list receipts: %w", err)
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		r, err := scanReceipt(rows)
		if err != nil {
			return nil, false, fmt.Errorf("ledger: list receipts: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("ledger: list receipts: %w", err)
	}
	more := len(out) > f.Limit
	if more {
		out = out[:f.Limit]
	}
	return out, more, nil
}

// SealedDisclosure is one stored selective value of a receipt.
type SealedDisclosure struct {
	Subject string
	KeyID   int64
	Sealed  events.SealedValue
}

// Disclosures returns the sealed selective values of receipt id by field.
func (l *Ledger) Disclosures(ctx context.Context, id string) (map[string]SealedDisclosure, error) {
	rows, err := l.pool.Query(ctx, "SELECT field, subject, key_id, nonce, ciphertext FROM disclosures WHERE receipt_id = $1", id)
	if err != nil {
		return nil, fmt.Errorf("ledger: disclosures of %s: %w", id, err)
	}
	defer rows.Close()
	out := map[string]SealedDisclosure{}
	for rows.Next() {
		var f string
		var d SealedDisclosure
		if err := rows.Scan(&f, &d.Subject, &d.KeyID, &d.Sealed.Nonce, &d.Sealed.Ciphertext); err != nil {
			return nil, fmt.Errorf("ledger: disclosures of %s: %w", id, err)
		}
		out[f] = d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger: disclosures of %s: %w", id, err)
	}
	return out, nil
}
