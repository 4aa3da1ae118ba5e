package ledger

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
)

// diff compares the shadow with the live ledger inside one repeatable-read
// snapshot of the live tables.
func (r *replayer) diff(ctx context.Context) error {
	d := r.rep.Diff
	if d == nil {
		d = &ReplayDiff{}
		r.rep.Diff = d
	}
	d.Shadow, d.Kept, d.Live = r.shadow, r.cfg.KeepShadow, r.live
	if _, err := r.spool.Exec(ctx, "ANALYZE receipts; ANALYZE merkle_hashes; ANALYZE tenant_heads"); err != nil {
		return fmt.Errorf("ledger: replay: analyze shadow: %w", err)
	}
	tx, err := r.cfg.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("ledger: replay: diff: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	// Room for the materialized (id, digest) sets and the join's sorts or
	// hash table (~100 B per receipt) instead of spilling to disk.
	if _, err := tx.Exec(ctx, "SET LOCAL work_mem = '256MB'"); err != nil {
		return fmt.Errorf("ledger: replay: diff: %w", err)
	}
	step := time.Now()
	if err := r.diffReceipts(ctx, tx, d); err != nil {
		return err
	}
	r.cfg.Logger.Debug("ledger: replay: receipts diffed", "rows", d.Compared, "took", time.Since(step))
	step = time.Now()
	err = r.diffHeads(ctx, tx, d)
	r.cfg.Logger.Debug("ledger: replay: heads, trees and checkpoints diffed", "took", time.Since(step))
	return err
}

// diffReceipts FULL JOINs the live receipts in scope with the shadow's on
// id. Rows are compared through a digest of every column both schemas have:
// SHA-256 over the bytea columns, each length-prefixed (NULL as length -1),
// then the text form of a ROW of all the other columns (composite output
// quotes and escapes every value, NULL is distinct from ""): an injective
// encoding, so two rows get the same digest exactly when every column is
// equal. Joining narrow (id, digest) pairs instead of whole rows keeps the
// join in memory for millions of receipts (a row is ~2 kB with its
// envelope; 1M rows would need ~2 GB of hash table or an external sort).
// The columns that differ are then named, with IS DISTINCT FROM, for the
// rows listed.
func (r *replayer) diffReceipts(ctx context.Context, tx pgx.Tx, d *ReplayDiff) error {
	cols, err := r.compareColumns(ctx, tx, d)
	if err != nil {
		return err
	}
	var parts []int32
	var los, his []int64
	for _, pr := range r.ranges {
		parts, los, his = append(parts, pr.Partition), append(los, pr.From), append(his, pr.DiffTo)
	}
	q := diffSQL(cols, r.liveTable("receipts"), r.shadowTable("receipts"), r.liveTable("ledger_positions"))
	rows, err := tx.Query(ctx, q, parts, los, his, events.TopicEvents, r.cfg.Tenant)
	if err != nil {
		return fmt.Errorf("ledger: replay: diff receipts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, tenant, kind *string
		var seq, off *int64
		var part *int32
		if err := rows.Scan(&id, &tenant, &seq, &part, &off, &kind, &d.Compared, &d.LiveRows); err != nil {
			return fmt.Errorf("ledger: replay: diff receipts: %w", err)
		}
		if id == nil {
			continue // the counts row
		}
		rd := RowDiff{ID: *id, Tenant: *tenant, Seq: *seq, Partition: *part, Offset: *off}
		switch *kind {
		case "missing":
			if d.Missing++; len(d.MissingRows) < r.cfg.MaxListed {
				d.MissingRows = append(d.MissingRows, rd)
			}
		case "extra":
			if d.Extra++; len(d.ExtraRows) < r.cfg.MaxListed {
				d.ExtraRows = append(d.ExtraRows, rd)
			}
		default:
			if d.Altered++; len(d.AlteredRows) < r.cfg.MaxListed {
				d.AlteredRows = append(d.AlteredRows, rd)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: replay: diff receipts: %w", err)
	}
	rows.Close()
	return r.alteredColumns(ctx, tx, cols, d.AlteredRows)
}

// diffSQL is the receipts diff query over the given (sanitized) tables;
// $1..$3 are the diffed offset ranges per partition, $4 the topic, $5 the
// tenant ("" for all).
func diffSQL(cols []diffColumn, live, shadow, positions string) string {
	digest := func(alias string) string {
		var parts, row []string
		for _, c := range cols {
			v := alias + "." + pgx.Identifier{c.name}.Sanitize()
			if c.bytea {
				parts = append(parts, fmt.Sprintf(`coalesce(int4send(octet_length(%s)) || %s, '\xffffffff'::bytea)`, v, v))
			} else {
				row = append(row, v)
			}
		}
		if len(row) > 0 {
			parts = append(parts, "convert_to(ROW("+strings.Join(row, ", ")+")::text, 'UTF8')")
		}
		if len(parts) == 0 {
			return "NULL::bytea"
		}
		return "sha256(" + strings.Join(parts, " || ") + ")"
	}
	// Live rows in scope: in a diffed offset range; or at a seq the shadow
	// rebuilt; or where the live positions say no row can be yet (at or
	// past the position, or a partition never read).
	q := `WITH rng(p, lo, hi) AS MATERIALIZED (SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[])),
		pos AS MATERIALIZED (SELECT partition AS p, next_offset FROM ` + positions + ` WHERE topic = $4),
		s AS MATERIALIZED (SELECT r.id, r.tenant, r.seq, r.kafka_partition, r.kafka_offset, ` + digest("r") + ` AS h
			FROM ` + shadow + ` r),
		seqs AS MATERIALIZED (SELECT tenant, min(seq) AS lo, max(seq) AS hi FROM s GROUP BY tenant),
		l AS MATERIALIZED (SELECT r.id, r.tenant, r.seq, r.kafka_partition, r.kafka_offset, ` + digest("r") + ` AS h
			FROM ` + live + ` r
			LEFT JOIN rng ON rng.p = r.kafka_partition
			LEFT JOIN seqs ON seqs.tenant = r.tenant
			LEFT JOIN pos ON pos.p = r.kafka_partition
			WHERE ($5 = '' OR r.tenant = $5) AND ((r.kafka_offset >= rng.lo AND r.kafka_offset < rng.hi)
				OR (r.seq BETWEEN seqs.lo AND seqs.hi) OR pos.p IS NULL OR r.kafka_offset >= pos.next_offset))
		SELECT coalesce(l.id, s.id), coalesce(l.tenant, s.tenant), coalesce(l.seq, s.seq),
			coalesce(l.kafka_partition, s.kafka_partition), coalesce(l.kafka_offset, s.kafka_offset),
			CASE WHEN l.id IS NULL THEN 'missing' WHEN s.id IS NULL THEN 'extra' ELSE 'altered' END,
			(SELECT count(*) FROM s), (SELECT count(*) FROM l)
		FROM l FULL JOIN s ON l.id = s.id
		WHERE l.h IS DISTINCT FROM s.h
		UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM s), (SELECT count(*) FROM l)
		ORDER BY 4, 5, 1`
	return q
}

// alteredColumns names the columns that differ in each listed altered row,
// with both values as text (cut at 120 characters; bytea as \x hex).
func (r *replayer) alteredColumns(ctx context.Context, tx pgx.Tx, cols []diffColumn, alt []RowDiff) error {
	if len(alt) == 0 {
		return nil
	}
	var changes []string
	for _, c := range cols {
		q := pgx.Identifier{c.name}.Sanitize()
		changes = append(changes, fmt.Sprintf("%s, CASE WHEN l.%s IS DISTINCT FROM s.%s THEN jsonb_build_array(left(l.%s::text, 120), left(s.%s::text, 120)) END",
			quoteLiteral(c.name), q, q, q, q))
	}
	// jsonb_build_object takes at most 100 arguments: 50 columns per call.
	var objs []string
	for len(changes) > 0 {
		n := min(len(changes), 50)
		objs = append(objs, "jsonb_build_object("+strings.Join(changes[:n], ", ")+")")
		changes = changes[n:]
	}
	if len(objs) == 0 {
		objs = []string{"'{}'::jsonb"}
	}
	ids := make([]string, len(alt))
	for i, a := range alt {
		ids[i] = a.ID
	}
	rows, err := tx.Query(ctx, `SELECT l.id, jsonb_strip_nulls(`+strings.Join(objs, " || ")+`)
		FROM `+r.liveTable("receipts")+` l JOIN `+r.shadowTable("receipts")+` s ON s.id = l.id WHERE l.id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("ledger: replay: altered columns: %w", err)
	}
	defer rows.Close()
	byID := map[string]map[string][2]*string{}
	for rows.Next() {
		var id string
		var ch map[string][2]*string
		if err := rows.Scan(&id, &ch); err != nil {
			return fmt.Errorf("ledger: replay: altered columns: %w", err)
		}
		byID[id] = ch
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: replay: altered columns: %w", err)
	}
	for i := range alt {
		alt[i].Changes = byID[alt[i].ID]
		for _, c := range cols {
			if _, ok := alt[i].Changes[c.name]; ok {
				alt[i].Columns = append(alt[i].Columns, c.name)
			}
		}
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

type diffColumn struct {
	name  string
	bytea bool
}

// compareColumns returns the receipts columns both schemas have (id
// excluded, live order), and records the ones only one has, or whose types
// differ (those are compared through their text form).
func (r *replayer) compareColumns(ctx context.Context, tx pgx.Tx, d *ReplayDiff) ([]diffColumn, error) {
	rows, err := tx.Query(ctx, `SELECT table_schema, column_name, data_type FROM information_schema.columns
		WHERE table_name = 'receipts' AND table_schema = ANY($1) ORDER BY ordinal_position`, []string{r.live, r.shadow})
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: receipts columns: %w", err)
	}
	type col struct{ name, typ string }
	var live []col
	shadow := map[string]string{}
	for rows.Next() {
		var s string
		var c col
		if err := rows.Scan(&s, &c.name, &c.typ); err != nil {
			rows.Close()
			return nil, fmt.Errorf("ledger: replay: receipts columns: %w", err)
		}
		if s == r.live {
			live = append(live, c)
		} else {
			shadow[c.name] = c.typ
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ledger: replay: receipts columns: %w", err)
	}
	var both []diffColumn
	for _, c := range live {
		st, ok := shadow[c.name]
		if !ok {
			d.Columns = append(d.Columns, "live only: "+c.name)
			continue
		}
		delete(shadow, c.name)
		if st != c.typ {
			d.Columns = append(d.Columns, fmt.Sprintf("%s: live type %s, replay type %s", c.name, c.typ, st))
		}
		if c.name != "id" {
			both = append(both, diffColumn{name: c.name, bytea: c.typ == "bytea" && st == "bytea"})
		}
	}
	for _, c := range slices.Sorted(maps.Keys(shadow)) {
		d.Columns = append(d.Columns, "replay only: "+c)
	}
	return both, nil
}

type headRow struct {
	seq    int64
	hash   string
	size   int64
	status string
	reason string
}

func readHeads(ctx context.Context, q querier, table, tenant string) (map[string]headRow, error) {
	rows, err := q.Query(ctx, "SELECT tenant, seq, head_hash, tree_size, status, COALESCE(broken_reason, '') FROM "+table+
		" WHERE $1 = '' OR tenant = $1", tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]headRow{}
	for rows.Next() {
		var t string
		var h headRow
		if err := rows.Scan(&t, &h.seq, &h.hash, &h.size, &h.status, &h.reason); err != nil {
			return nil, err
		}
		out[t] = h
	}
	return out, rows.Err()
}

// brokenAt parses the "partition P offset O: …" prefix of a broken_reason
// the projector wrote.
func brokenAt(reason string) (part int32, off int64, ok bool) {
	_, err := fmt.Sscanf(reason, "partition %d offset %d:", &part, &off)
	return part, off, err == nil
}

// diffHeads compares tenant heads, Merkle roots, chain anchors and
// checkpoints.
func (r *replayer) diffHeads(ctx context.Context, tx pgx.Tx, d *ReplayDiff) error {
	add := func(t, what, live, replay string) {
		d.Heads = append(d.Heads, HeadDiff{Tenant: t, What: what, Live: live, Replay: replay})
	}
	shadow, err := readHeads(ctx, r.spool, r.shadowTable("tenant_heads"), r.cfg.Tenant)
	if err != nil {
		return fmt.Errorf("ledger: replay: shadow heads: %w", err)
	}
	live, err := readHeads(ctx, tx, r.liveTable("tenant_heads"), r.cfg.Tenant)
	if err != nil {
		return fmt.Errorf("ledger: replay: live heads: %w", err)
	}
	for _, t := range slices.Sorted(maps.Keys(r.shadowSkip)) {
		add(t, "anchor", "", r.shadowSkip[t])
	}
	// Anchors: the receipt before the first one seen must be the live
	// ledger's.
	for _, a := range r.rep.Anchors {
		lh, err := r.liveHashTx(ctx, tx, a.Tenant, a.Seq)
		if err != nil {
			return err
		}
		if lh != a.PrevHash {
			add(a.Tenant, "anchor", fmt.Sprintf("seq %d payload_hash %s", a.Seq, orNone(lh)), fmt.Sprintf("seq %d prev_hash %s", a.Seq+1, a.PrevHash))
		}
	}
	var mt []string
	var mlo, mhi []int64
	for _, t := range slices.Sorted(maps.Keys(shadow)) {
		if _, skip := r.shadowSkip[t]; skip {
			continue
		}
		s := shadow[t]
		l, ok := live[t]
		if !ok {
			add(t, "head", "none", fmt.Sprintf("seq %d status %s", s.seq, s.status))
			continue
		}
		if a := r.shadowAnchor[t]; min(s.size, l.size) > a {
			mt = append(mt, t)
			mlo, mhi = append(mlo, tlog.StoredHashIndex(0, a)), append(mhi, tlog.StoredHashIndex(0, min(s.size, l.size)))
		}
		switch {
		case s.status == "broken" && (l.status != "broken" || l.reason != s.reason):
			add(t, "status", l.status+" "+l.reason, s.status+" "+s.reason)
		case s.status != "broken" && l.status == "broken":
			// Broken later than the diffed range is not a difference.
			if p, o, ok := brokenAt(l.reason); !ok || o < r.diffTo[p] {
				add(t, "status", l.status+" "+l.reason, s.status)
			}
		}
		if l.size < s.size {
			add(t, "tree_size", fmt.Sprint(l.size), fmt.Sprint(s.size))
			continue
		}
		if l.seq == s.seq && l.hash != s.hash {
			add(t, "head", l.hash, s.hash)
		}
		if err := r.diffTree(ctx, tx, t, s.size, d, add); err != nil {
			return err
		}
	}
	step := time.Now()
	if err := r.diffMerkle(ctx, tx, d, mt, mlo, mhi); err != nil {
		return err
	}
	r.cfg.Logger.Debug("ledger: replay: stored Merkle hashes diffed", "hashes", d.MerkleCompared, "took", time.Since(step))
	// After a replay of every partition from its log start, a live tenant
	// the log does not have is extra, unless its receipts lie past the
	// diffed range (projected since the replay started, or past --to).
	if !r.rep.Partial {
		var parts []int32
		var his []int64
		for _, pr := range r.ranges {
			parts, his = append(parts, pr.Partition), append(his, pr.DiffTo)
		}
		for _, t := range slices.Sorted(maps.Keys(live)) {
			if _, ok := shadow[t]; ok {
				continue
			}
			var later bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+r.liveTable("receipts")+` r
				JOIN unnest($2::int[], $3::bigint[]) AS rng(p, hi) ON rng.p = r.kafka_partition
				WHERE r.tenant = $1 AND r.kafka_offset >= rng.hi)`, t, parts, his).Scan(&later); err != nil {
				return fmt.Errorf("ledger: replay: live receipts of %s: %w", t, err)
			}
			if !later {
				add(t, "head", fmt.Sprintf("seq %d status %s", live[t].seq, live[t].status), "none")
			}
		}
	}
	return nil
}

// diffMerkle compares the stored hashes of the rebuilt leaves, [lo, hi) of
// each tenant: tlog stores the nodes a leaf completes right after the leaf,
// so leaves [a, b) own exactly the indexes [StoredHashIndex(0, a),
// StoredHashIndex(0, b)). Roots cover only the nodes on their path; proofs
// read the others.
func (r *replayer) diffMerkle(ctx context.Context, tx pgx.Tx, d *ReplayDiff, tenants []string, lo, hi []int64) error {
	if len(tenants) == 0 {
		return nil
	}
	q := `WITH rng(tenant, lo, hi) AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])),
		l AS (SELECT m.tenant, m.idx, m.hash FROM ` + r.liveTable("merkle_hashes") + ` m JOIN rng ON m.tenant = rng.tenant AND m.idx >= rng.lo AND m.idx < rng.hi),
		s AS (SELECT m.tenant, m.idx, m.hash FROM ` + r.shadowTable("merkle_hashes") + ` m JOIN rng ON m.tenant = rng.tenant AND m.idx >= rng.lo AND m.idx < rng.hi)
		SELECT coalesce(l.tenant, s.tenant), coalesce(l.idx, s.idx), l.hash, s.hash, (SELECT count(*) FROM s)
		FROM l FULL JOIN s ON l.tenant = s.tenant AND l.idx = s.idx
		WHERE l.hash IS DISTINCT FROM s.hash
		UNION ALL SELECT '', -1, NULL, NULL, (SELECT count(*) FROM s)
		ORDER BY 1, 2`
	rows, err := tx.Query(ctx, q, tenants, lo, hi)
	if err != nil {
		return fmt.Errorf("ledger: replay: diff Merkle hashes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var idx, n int64
		var lh, sh []byte
		if err := rows.Scan(&t, &idx, &lh, &sh, &n); err != nil {
			return fmt.Errorf("ledger: replay: diff Merkle hashes: %w", err)
		}
		d.MerkleCompared = n
		if idx < 0 {
			continue
		}
		if d.MerkleDiffs++; d.MerkleDiffs <= int64(r.cfg.MaxListed) {
			d.Heads = append(d.Heads, HeadDiff{Tenant: t, What: fmt.Sprintf("merkle_hash %d", idx), Live: hexOrNone(lh), Replay: hexOrNone(sh)})
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: replay: diff Merkle hashes: %w", err)
	}
	return nil
}

func hexOrNone(b []byte) string {
	if b == nil {
		return "none"
	}
	return hex.EncodeToString(b)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (r *replayer) liveHashTx(ctx context.Context, tx pgx.Tx, tenant string, seq int64) (string, error) {
	var h string
	err := tx.QueryRow(ctx, "SELECT payload_hash FROM "+r.liveTable("receipts")+" WHERE tenant = $1 AND seq = $2", tenant, seq).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ledger: replay: live receipt %s seq %d: %w", tenant, seq, err)
	}
	return h, nil
}

// diffTree compares the roots of tenant's shadow and live trees at the
// shadow's size, and the roots of the live checkpoints the shadow covers
// (sizes after the anchor, newest first, capped).
func (r *replayer) diffTree(ctx context.Context, tx pgx.Tx, tenant string, size int64, d *ReplayDiff, add func(t, what, live, replay string)) error {
	anchor := r.shadowAnchor[tenant]
	if size <= anchor {
		return nil
	}
	type cp struct {
		size int64
		root []byte
		note string
	}
	rows, err := tx.Query(ctx, "SELECT tree_size, root_hash, note FROM "+r.liveTable("checkpoints")+
		" WHERE tenant = $1 AND tree_size > $2 AND tree_size <= $3 ORDER BY tree_size DESC", tenant, anchor, size)
	if err != nil {
		return fmt.Errorf("ledger: replay: live checkpoints of %s: %w", tenant, err)
	}
	var cps []cp
	for rows.Next() {
		var c cp
		if err := rows.Scan(&c.size, &c.root, &c.note); err != nil {
			rows.Close()
			return fmt.Errorf("ledger: replay: live checkpoints of %s: %w", tenant, err)
		}
		if len(cps) < maxCheckpointsPerTenant {
			cps = append(cps, c)
		} else {
			d.CheckpointsSkipped++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: replay: live checkpoints of %s: %w", tenant, err)
	}
	need := map[int64]bool{}
	for _, i := range treeHashIndexes(size) {
		need[i] = true
	}
	for _, c := range cps {
		for _, i := range treeHashIndexes(c.size) {
			need[i] = true
		}
	}
	idx := slices.Sorted(maps.Keys(need))
	sh, err := readHashes(ctx, r.spool, tenant, idx)
	if err != nil {
		return fmt.Errorf("ledger: replay: shadow Merkle hashes of %s: %w", tenant, err)
	}
	lh, err := readHashes(ctx, tx, tenant, treeHashIndexes(size))
	if err != nil {
		return fmt.Errorf("ledger: replay: live Merkle hashes of %s: %w", tenant, err)
	}
	root := func(m map[int64]tlog.Hash, n int64) (tlog.Hash, error) {
		return tlog.TreeHash(n, tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(ix))
			for i, x := range ix {
				h, ok := m[x]
				if !ok {
					return nil, fmt.Errorf("stored hash %d missing", x)
				}
				out[i] = h
			}
			return out, nil
		}))
	}
	sroot, err := root(sh, size)
	if err != nil {
		return fmt.Errorf("ledger: replay: shadow root of %s at %d: %w", tenant, size, err)
	}
	d.RootsCompared++
	if lroot, err := root(lh, size); err != nil {
		add(tenant, "root", fmt.Sprintf("size %d: %v", size, err), fmt.Sprintf("size %d: %s", size, sroot))
	} else if lroot != sroot {
		add(tenant, "root", fmt.Sprintf("size %d: %s", size, lroot), fmt.Sprintf("size %d: %s", size, sroot))
	}
	var verifiers note.Verifiers
	if r.cfg.CheckpointVerifier != "" {
		v, err := note.NewVerifier(r.cfg.CheckpointVerifier)
		if err != nil {
			return fmt.Errorf("ledger: replay: checkpoint verifier: %w", err)
		}
		verifiers = note.VerifierList(v)
	}
	for _, c := range cps {
		d.CheckpointsChecked++
		want, err := root(sh, c.size)
		if err != nil {
			return fmt.Errorf("ledger: replay: shadow root of %s at %d: %w", tenant, c.size, err)
		}
		what := fmt.Sprintf("checkpoint %d", c.size)
		if len(c.root) != tlog.HashSize || tlog.Hash(c.root) != want {
			add(tenant, what, fmt.Sprintf("root_hash %x", c.root), "root "+want.String())
			continue
		}
		text := c.note
		if verifiers != nil {
			n, err := note.Open([]byte(c.note), verifiers)
			if err != nil {
				add(tenant, what, "note signature: "+err.Error(), "a note signed by "+r.cfg.CheckpointVerifier)
				continue
			}
			text = n.Text
		} else if i := strings.Index(text, "\n\n"); i >= 0 {
			text = text[:i+1]
		}
		nt, ns, nr, err := ParseCheckpointText(text)
		if err != nil || nt != tenant || ns != c.size || nr != want {
			add(tenant, what, fmt.Sprintf("note %q", text), CheckpointText(tenant, c.size, want))
		}
	}
	return nil
}

// treeHashIndexes returns the stored-hash indexes tlog.TreeHash(n) reads.
func treeHashIndexes(n int64) []int64 {
	var idx []int64
	_, _ = tlog.TreeHash(n, tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		idx = append(idx, ix...)
		return make([]tlog.Hash, len(ix)), nil
	}))
	return idx
}
