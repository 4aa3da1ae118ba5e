package audit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

// ErrNoReceipts is returned by Export when the tenant has no receipt in the
// requested time range.
var ErrNoReceipts = errors.New("audit: no receipts in the range")

// ExportConfig configures Export.
type ExportConfig struct {
	// Ledger reads receipts, checkpoints and stored hashes, and signs a
	// checkpoint when none covers the range (required).
	Ledger *ledger.Ledger
	// Tenant to export (required).
	Tenant string
	// From and To select receipts by created_at in [From, To) (required).
	// The bundle holds the contiguous seq range from the first to the last
	// of them, so the chain verifies without holes.
	From, To time.Time
	// Keys is the receipt verification key set, as served at GET /v1/keys
	// (required). The checkpoint verifier key comes from Ledger.
	Keys keyfile.KeySet
	// Out receives the tar.gz bundle (required). Export does not close it.
	Out io.Writer
	// Progress is called with receipts written so far and the total
	// (optional; at most every 100 ms, and once at the end).
	Progress func(done, total int)
	// GeneratedBy is the manifest's generated_by (optional, default "companyos").
	GeneratedBy string
	// Disclose returns the selective values of a receipt to reveal in the
	// bundle (optional; default none). The verifier checks each against the
	// receipt's signed commitment.
	Disclose func(ctx context.Context, r *ledger.ExportRow) ([]events.Disclosure, error)
	// Evidence returns the evidence bytes whose SHA-256 is a receipt's
	// evidence_hash, or ok=false when the store does not have them
	// (optional; default: no evidence/ directory).
	Evidence func(ctx context.Context, evidenceHash string) (data []byte, ok bool, err error)
	// SBOM and Attestations are files to include as sbom/<name> and
	// attestations/<name> (optional).
	SBOM, Attestations string
	// CompressionLevel for gzip (optional, default gzip.DefaultCompression).
	CompressionLevel int
	// Workers compressing in parallel (optional, default GOMAXPROCS).
	Workers int
	// TempDir for the compressed spool of receipts.jsonl (optional, default
	// os.TempDir()).
	TempDir string
}

// Validate reports every missing or invalid field.
func (c ExportConfig) Validate() error {
	var errs []error
	if c.Ledger == nil {
		errs = append(errs, errors.New("audit: export: ledger required"))
	}
	if c.Tenant == "" {
		errs = append(errs, errors.New("audit: export: tenant required"))
	}
	if c.From.IsZero() || c.To.IsZero() || !c.From.Before(c.To) {
		errs = append(errs, errors.New("audit: export: need from < to"))
	}
	if len(c.Keys.Keys) == 0 {
		errs = append(errs, errors.New("audit: export: receipt keys required"))
	} else if err := c.Keys.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("audit: export: keys: %w", err))
	}
	if c.Out == nil {
		errs = append(errs, errors.New("audit: export: output required"))
	}
	if c.CompressionLevel != 0 {
		if _, err := gzip.NewWriterLevel(io.Discard, c.CompressionLevel); err != nil {
			errs = append(errs, fmt.Errorf("audit: export: compression level: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ExportResult describes a written bundle.
type ExportResult struct {
	Tenant            string  `json:"tenant"`
	Receipts          int64   `json:"receipts"`
	FirstSeq          int64   `json:"first_seq"`
	LastSeq           int64   `json:"last_seq"`
	Checkpoints       int     `json:"checkpoints"`
	TreeSize          int64   `json:"tree_size"` // of the final checkpoint
	SignedCheckpoint  bool    `json:"signed_checkpoint"`
	Disclosures       int64   `json:"disclosures"`
	EvidenceFiles     int     `json:"evidence_files"`
	Bytes             int64   `json:"bytes"`
	SHA256            string  `json:"sha256"` // of the bundle
	ElapsedSeconds    float64 `json:"elapsed_seconds"`
	ReceiptsPerSecond float64 `json:"receipts_per_second"`
}

// Export writes the evidence bundle of cfg.Tenant's receipts created in
// [cfg.From, cfg.To) to cfg.Out (format: schemas/bundle.v1.md).
//
// It streams: receipts go from one Postgres query through the line encoder
// into gzip members compressed on every core and spooled (compressed) to a
// temporary file, because the tar header of receipts.jsonl and the manifest
// that precede them need the file's size and hash. Memory stays constant
// whatever the range.
func Export(ctx context.Context, cfg ExportConfig) (ExportResult, error) {
	if err := cfg.Validate(); err != nil {
		return ExportResult{}, err
	}
	if cfg.GeneratedBy == "" {
		cfg.GeneratedBy = "companyos"
	}
	if cfg.CompressionLevel == 0 {
		cfg.CompressionLevel = gzip.DefaultCompression
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	start := time.Now()
	l := cfg.Ledger
	res := ExportResult{Tenant: cfg.Tenant}

	first, last, _, ok, err := l.ReceiptSeqRange(ctx, cfg.Tenant, cfg.From, cfg.To)
	if err != nil {
		return res, fmt.Errorf("audit: export: %w", err)
	}
	if !ok {
		return res, fmt.Errorf("%w: tenant %s, [%s, %s)", ErrNoReceipts, cfg.Tenant, cfg.From.Format(time.RFC3339Nano), cfg.To.Format(time.RFC3339Nano))
	}
	res.FirstSeq, res.LastSeq, res.Receipts = first, last, last-first+1
	latest, err := l.LatestCheckpoint(ctx, cfg.Tenant)
	if errors.Is(err, ledger.ErrNotFound) || err == nil && latest.TreeSize < last {
		latest, err = l.Checkpoint(ctx, cfg.Tenant)
		res.SignedCheckpoint = true
	}
	if err != nil {
		return res, fmt.Errorf("audit: export: checkpoint: %w", err)
	}

	snap, err := l.Snapshot(ctx, cfg.Tenant)
	if err != nil {
		return res, fmt.Errorf("audit: export: %w", err)
	}
	defer snap.Close(context.WithoutCancel(ctx))
	final, err := snap.LatestCheckpoint(ctx)
	if err != nil {
		return res, fmt.Errorf("audit: export: %w", err)
	}
	if final.TreeSize < last {
		return res, fmt.Errorf("audit: export: the latest checkpoint (size %d) does not cover seq %d", final.TreeSize, last)
	}
	cps, err := snap.Checkpoints(ctx, first, last)
	if err != nil {
		return res, fmt.Errorf("audit: export: %w", err)
	}
	if len(cps) == 0 || cps[len(cps)-1].TreeSize != final.TreeSize {
		cps = append(cps, final)
	}
	res.Checkpoints, res.TreeSize = len(cps), final.TreeSize
	proofs, err := exportProofs(ctx, snap, first-1, last, cps)
	if err != nil {
		return res, err
	}

	spool, err := os.CreateTemp(cfg.TempDir, "companyos-export-*.gz")
	if err != nil {
		return res, fmt.Errorf("audit: export: spool: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	rs, err := writeReceipts(ctx, snap, &cfg, first, last, spool)
	if err != nil {
		return res, err
	}
	res.Disclosures = rs.disclosures

	files := map[string][]byte{}
	var extra []string // sbom, attestations, evidence: in this order
	manifest := Manifest{Bundle: BundleInfo{Version: FormatVersion, Tenant: cfg.Tenant, From: cfg.From.UTC(), To: cfg.To.UTC(),
		GeneratedBy: cfg.GeneratedBy, Receipts: ReceiptsFile, ReceiptCount: res.Receipts, FirstSeq: first, LastSeq: last,
		PolicyBundles: []PolicyBundle{}, Keys: KeysFile, Checkpoints: CheckpointsFile, Proofs: ProofsFile}, Files: map[string]string{}}
	for _, pv := range slices.Sorted(maps.Keys(rs.policies)) {
		manifest.Bundle.PolicyBundles = append(manifest.Bundle.PolicyBundles, splitPolicyVersion(pv))
	}
	for _, a := range []struct {
		path, dir string
		field     **string
	}{{cfg.SBOM, SBOMDir, &manifest.Bundle.SBOM}, {cfg.Attestations, AttestationsDir, &manifest.Bundle.Attestations}} {
		if a.path == "" {
			continue
		}
		data, err := os.ReadFile(a.path)
		if err != nil {
			return res, fmt.Errorf("audit: export: %w", err)
		}
		name := a.dir + filepath.Base(a.path)
		files[name], *a.field = data, &name
		extra = append(extra, name)
	}
	if cfg.Evidence != nil {
		for _, eh := range slices.Sorted(maps.Keys(rs.evidence)) {
			data, ok, err := cfg.Evidence(ctx, eh)
			if err != nil {
				return res, fmt.Errorf("audit: export: evidence %s: %w", eh, err)
			}
			if !ok {
				continue
			}
			if got := events.EvidenceHash(data); got != eh {
				return res, fmt.Errorf("audit: export: evidence store returned %s for %s", got, eh)
			}
			name := EvidenceDir + strings.TrimPrefix(eh, "sha256:")
			files[name] = data
			extra = append(extra, name)
			res.EvidenceFiles++
		}
	}

	keys, err := json.MarshalIndent(Keys{KeySet: cfg.Keys, CheckpointVerifier: l.VerifierKey()}, "", "  ")
	if err != nil {
		return res, fmt.Errorf("audit: export: keys: %w", err)
	}
	files[KeysFile] = append(keys, '\n')
	var cpLines bytes.Buffer
	for _, c := range cps {
		b, err := json.Marshal(CheckpointLine{TreeSize: c.TreeSize, RootHash: c.RootHash, CreatedAt: c.CreatedAt.UTC(), Note: c.Note})
		if err != nil {
			return res, fmt.Errorf("audit: export: checkpoint: %w", err)
		}
		cpLines.Write(append(b, '\n'))
	}
	files[CheckpointsFile] = cpLines.Bytes()
	files[ProofsFile] = proofs
	for name, data := range files {
		manifest.Files[name] = events.HashPayload(data)
	}
	manifest.Files[ReceiptsFile] = "sha256:" + hex.EncodeToString(rs.hash)
	mb, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return res, fmt.Errorf("audit: export: manifest: %w", err)
	}

	// Assemble: [gzip members: tar of the small files + the receipts.jsonl
	// header] [spooled members: receipts.jsonl] [a member: tar padding and
	// end-of-archive blocks].
	out := &hashingWriter{w: cfg.Out, h: sha256.New()}
	prefix, err := newParallelGzip(out, cfg.CompressionLevel, cfg.Workers)
	if err != nil {
		return res, err
	}
	tw := tar.NewWriter(prefix)
	mtime := rs.lastCreated
	for _, name := range append([]string{ManifestFile, KeysFile, CheckpointsFile, ProofsFile}, extra...) {
		body := files[name]
		if name == ManifestFile {
			body = append(mb, '\n')
		}
		if err := writeTarFile(tw, name, body, mtime); err != nil {
			return res, err
		}
	}
	// tar.Writer writes a header straight through; the body follows from
	// the spool, so the writer is deliberately not flushed or closed.
	if err := tw.WriteHeader(tarHeader(ReceiptsFile, rs.size, mtime)); err != nil {
		return res, fmt.Errorf("audit: export: tar: %w", err)
	}
	if err := prefix.Close(); err != nil {
		return res, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return res, fmt.Errorf("audit: export: spool: %w", err)
	}
	if _, err := io.Copy(out, spool); err != nil {
		return res, fmt.Errorf("audit: export: write: %w", err)
	}
	suffix, err := newParallelGzip(out, cfg.CompressionLevel, 1)
	if err != nil {
		return res, err
	}
	suffix.Write(make([]byte, (512-rs.size%512)%512+2*512))
	if err := suffix.Close(); err != nil {
		return res, err
	}
	res.Bytes, res.SHA256 = out.n, "sha256:"+hex.EncodeToString(out.h.Sum(nil))
	res.ElapsedSeconds = time.Since(start).Seconds()
	res.ReceiptsPerSecond = float64(res.Receipts) / max(res.ElapsedSeconds, 1e-9)
	return res, nil
}

type hashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (w *hashingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// exportProofs builds proofs.jsonl: the frontier of the a0 leaves before the
// range, and a consistency proof between each pair of consecutive
// checkpoints and from the exported tree (last leaves) to the final one.
// All stored hashes are fetched in one round trip.
func exportProofs(ctx context.Context, snap *ledger.Snapshot, a0, last int64, cps []ledger.Checkpoint) ([]byte, error) {
	type pair struct{ old, new int64 }
	var pairs []pair
	for i := 0; i+1 < len(cps); i++ {
		pairs = append(pairs, pair{cps[i].TreeSize, cps[i+1].TreeSize})
	}
	if final := cps[len(cps)-1].TreeSize; last < final && !slices.Contains(pairs, pair{last, final}) {
		pairs = append(pairs, pair{last, final})
	}
	need := frontierIndexes(a0)
	record := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		need = append(need, idx...)
		return make([]tlog.Hash, len(idx)), nil
	})
	for _, p := range pairs {
		if _, err := tlog.ProveTree(p.new, p.old, record); err != nil {
			return nil, fmt.Errorf("audit: export: proof %d→%d: %w", p.old, p.new, err)
		}
	}
	slices.Sort(need)
	stored, err := snap.StoredHashes(ctx, slices.Compact(need))
	if err != nil {
		return nil, fmt.Errorf("audit: export: %w", err)
	}
	read := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	var buf bytes.Buffer
	line := func(p ProofLine) error {
		if p.Hashes == nil {
			p.Hashes = []tlog.Hash{}
		}
		b, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("audit: export: proofs: %w", err)
		}
		buf.Write(append(b, '\n'))
		return nil
	}
	frontier := make([]tlog.Hash, 0, 64)
	for _, idx := range frontierIndexes(a0) {
		frontier = append(frontier, stored[idx])
	}
	if err := line(ProofLine{Type: ProofFrontier, TreeSize: a0, Hashes: frontier}); err != nil {
		return nil, err
	}
	for _, p := range pairs {
		proof, err := tlog.ProveTree(p.new, p.old, read)
		if err != nil {
			return nil, fmt.Errorf("audit: export: proof %d→%d: %w", p.old, p.new, err)
		}
		if err := line(ProofLine{Type: ProofConsistency, OldSize: p.old, NewSize: p.new, Hashes: proof}); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

type receiptsStats struct {
	size        int64
	hash        []byte
	lastCreated time.Time
	policies    map[string]bool
	evidence    map[string]bool
	disclosures int64
}

// writeReceipts streams receipts.jsonl, compressed, into spool.
func writeReceipts(ctx context.Context, snap *ledger.Snapshot, cfg *ExportConfig, first, last int64, spool io.Writer) (receiptsStats, error) {
	rs := receiptsStats{policies: map[string]bool{}, evidence: map[string]bool{}}
	z, err := newParallelGzip(spool, cfg.CompressionLevel, cfg.Workers)
	if err != nil {
		return rs, err
	}
	h := sha256.New()
	total := int(last - first + 1)
	var (
		line         []byte
		lastPolicy   string
		done         int
		lastProgress time.Time
	)
	err = snap.ScanReceipts(ctx, first, last, func(r *ledger.ExportRow) error {
		env := r.Envelope
		if bytes.IndexByte(env, '\n') >= 0 {
			// Stored envelopes are JSON; one line needs it without newlines.
			var cb bytes.Buffer
			if err := json.Compact(&cb, env); err != nil {
				return fmt.Errorf("audit: export: seq %d: stored envelope: %w", r.Seq, err)
			}
			env = cb.Bytes()
		}
		line = append(line[:0], `{"seq":`...)
		line = strconv.AppendInt(line, r.Seq, 10)
		line = append(line, `,"id":`...)
		line = appendJSONString(line, r.ID)
		line = append(line, `,"envelope":`...)
		line = append(line, env...)
		if cfg.Disclose != nil {
			ds, err := cfg.Disclose(ctx, r)
			if err != nil {
				return fmt.Errorf("audit: export: disclosures of %s: %w", r.ID, err)
			}
			if len(ds) > 0 {
				b, err := json.Marshal(ds)
				if err != nil {
					return fmt.Errorf("audit: export: disclosures of %s: %w", r.ID, err)
				}
				line = append(append(line, `,"disclosures":`...), b...)
				rs.disclosures += int64(len(ds))
			}
		}
		line = append(line, "}\n"...)
		h.Write(line)
		if _, err := z.Write(line); err != nil {
			return err
		}
		rs.size += int64(len(line))
		if r.PolicyVersion != lastPolicy {
			rs.policies[r.PolicyVersion], lastPolicy = true, r.PolicyVersion
		}
		if cfg.Evidence != nil {
			rs.evidence[r.EvidenceHash] = true
		}
		if r.CreatedAt.After(rs.lastCreated) {
			rs.lastCreated = r.CreatedAt
		}
		done++
		if cfg.Progress != nil && (done == total || time.Since(lastProgress) > 100*time.Millisecond) {
			lastProgress = time.Now()
			cfg.Progress(done, total)
		}
		return nil
	})
	if cerr := z.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rs, fmt.Errorf("audit: export: receipts: %w", err)
	}
	rs.hash = h.Sum(nil)
	rs.lastCreated = rs.lastCreated.UTC()
	return rs, nil
}

// appendJSONString appends s as a JSON string; plain printable ASCII (every
// receipt id) is copied, anything else goes through encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	return append(append(append(dst, '"'), s...), '"')
}
