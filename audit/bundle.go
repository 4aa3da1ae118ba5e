package audit

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

// FormatVersion is manifest.json's bundle.version for this format.
const FormatVersion = "1"

// File names of format v1 (schemas/bundle.v1.md).
const (
	ManifestFile    = "manifest.json"
	KeysFile        = "keys.json"
	CheckpointsFile = "checkpoints.jsonl"
	ProofsFile      = "proofs.jsonl"
	ReceiptsFile    = "receipts.jsonl"
	// EvidenceDir holds optional evidence: evidence/<hex>, where hex is the
	// hex part of a receipt's evidence_hash and the file's SHA-256.
	EvidenceDir = "evidence/"
	// SBOMDir and AttestationsDir hold the optional files the manifest's
	// bundle.sbom and bundle.attestations name.
	SBOMDir         = "sbom/"
	AttestationsDir = "attestations/"
)

// Manifest is manifest.json: what the bundle claims to hold, and the SHA-256
// of every other file. It is not signed: the signatures that matter are the
// receipts' and the checkpoints'; the manifest catches corruption and tells
// the verifier what to expect.
type Manifest struct {
	Bundle BundleInfo `json:"bundle"`
	// Files maps every file but manifest.json to "sha256:<hex>" of its bytes.
	Files map[string]string `json:"files"`
}

// BundleInfo is the manifest's "bundle" object; field order is the wire order.
type BundleInfo struct {
	Version      string    `json:"version"`
	Tenant       string    `json:"tenant"`
	From         time.Time `json:"from"`
	To           time.Time `json:"to"`
	GeneratedBy  string    `json:"generated_by"`
	Receipts     string    `json:"receipts"`
	ReceiptCount int64     `json:"receipt_count"`
	// FirstSeq and LastSeq bound the exported, contiguous seq range.
	FirstSeq      int64          `json:"first_seq"`
	LastSeq       int64          `json:"last_seq"`
	PolicyBundles []PolicyBundle `json:"policy_bundles"`
	Keys          string         `json:"keys"`
	Checkpoints   string         `json:"checkpoints"`
	Proofs        string         `json:"proofs"`
	SBOM          *string        `json:"sbom"`
	Attestations  *string        `json:"attestations"`
}

// PolicyBundle is one distinct policy_version seen in the receipts, split at
// "+": version "1.8.0", hash "sha256:0123456789ab".
type PolicyBundle struct {
	Version string `json:"version"`
	Hash    string `json:"hash"`
}

func splitPolicyVersion(v string) PolicyBundle {
	ver, hash, _ := strings.Cut(v, "+")
	return PolicyBundle{Version: ver, Hash: hash}
}

// ReceiptLine is one line of receipts.jsonl, in seq order. Seq and ID repeat
// the signed payload's for grep-ability; the verifier checks they agree.
type ReceiptLine struct {
	Seq int64  `json:"seq"`
	ID  string `json:"id"`
	// Envelope is the DSSE envelope exactly as stored (the Kafka record value).
	Envelope    json.RawMessage     `json:"envelope"`
	Disclosures []events.Disclosure `json:"disclosures,omitempty"`
}

// Keys is keys.json: the receipt key set as served at GET /v1/keys, plus the
// checkpoint note verifier key ("name+hash+base64", golang.org/x/mod/sumdb/note).
type Keys struct {
	keyfile.KeySet
	CheckpointVerifier string `json:"checkpoint_verifier"`
}

// CheckpointLine is one line of checkpoints.jsonl. Note is the signed
// checkpoint (ledger.CheckpointText, signed with sumdb/note); TreeSize and
// RootHash repeat its text, CreatedAt is when the ledger signed it (unsigned).
type CheckpointLine struct {
	TreeSize  int64     `json:"tree_size"`
	RootHash  tlog.Hash `json:"root_hash"`
	CreatedAt time.Time `json:"created_at"`
	Note      string    `json:"note"`
}

// Proof line types.
const (
	ProofFrontier    = "frontier"
	ProofConsistency = "consistency"
)

// ProofLine is one line of proofs.jsonl.
//
//   - frontier: Hashes are the roots of the maximal complete subtrees of the
//     first TreeSize leaves (the leaves before the first exported receipt),
//     left to right; empty when the export starts at seq 1.
//   - consistency: a tlog.TreeProof that the tree of OldSize leaves is a
//     prefix of the tree of NewSize leaves.
type ProofLine struct {
	Type     string      `json:"type"`
	TreeSize int64       `json:"tree_size,omitempty"`
	OldSize  int64       `json:"old_size,omitempty"`
	NewSize  int64       `json:"new_size,omitempty"`
	Hashes   []tlog.Hash `json:"hashes"`
}

// frontierIndexes returns the tlog stored-hash indexes of the roots of the
// maximal complete subtrees of [0, n), left to right (what tlog.TreeHash reads).
func frontierIndexes(n int64) []int64 {
	var out []int64
	for lo := int64(0); lo < n; {
		level := bits.Len64(uint64(n-lo)) - 1
		out = append(out, tlog.StoredHashIndex(level, lo>>level))
		lo += 1 << level
	}
	return out
}

// tree is an RFC 6962 Merkle tree kept as its frontier: the roots of the
// maximal complete subtrees of its n leaves, left to right. Appending a leaf
// costs one hash amortised; the root costs one hash per frontier entry.
type tree struct {
	n      int64
	hashes []tlog.Hash
	levels []int
}

// newTree resumes a tree of n leaves from its frontier (frontierIndexes order).
func newTree(n int64, frontier []tlog.Hash) (*tree, error) {
	if n < 0 || bits.OnesCount64(uint64(n)) != len(frontier) {
		return nil, fmt.Errorf("a tree of %d leaves has %d frontier hashes, not %d", n, bits.OnesCount64(uint64(max(n, 0))), len(frontier))
	}
	t := &tree{n: n, hashes: append(make([]tlog.Hash, 0, 64), frontier...)}
	for level := 63; level >= 0; level-- {
		if n&(1<<level) != 0 {
			t.levels = append(t.levels, level)
		}
	}
	return t, nil
}

func (t *tree) append(leaf tlog.Hash) {
	t.hashes = append(t.hashes, leaf)
	t.levels = append(t.levels, 0)
	t.n++
	for k := len(t.hashes); k >= 2 && t.levels[k-1] == t.levels[k-2]; k-- {
		t.hashes[k-2] = tlog.NodeHash(t.hashes[k-2], t.hashes[k-1])
		t.levels[k-2]++
		t.hashes, t.levels = t.hashes[:k-1], t.levels[:k-1]
	}
}

// root is tlog.TreeHash of the n leaves.
func (t *tree) root() tlog.Hash {
	if len(t.hashes) == 0 {
		return tlog.Hash{}
	}
	h := t.hashes[len(t.hashes)-1]
	for i := len(t.hashes) - 2; i >= 0; i-- {
		h = tlog.NodeHash(t.hashes[i], h)
	}
	return h
}

// tarHeader is the one header shape of every bundle file: a regular file,
// mode 0644, owner 0:0 without names, and one fixed modification time, so
// equal content gives equal bytes.
func tarHeader(name string, size int64, mtime time.Time) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: mtime.Truncate(time.Second), Format: tar.FormatPAX}
}

// writeTarFile writes one file (header, body, padding) to tw.
func writeTarFile(tw *tar.Writer, name string, body []byte, mtime time.Time) error {
	if err := tw.WriteHeader(tarHeader(name, int64(len(body)), mtime)); err != nil {
		return fmt.Errorf("audit: tar %s: %w", name, err)
	}
	if _, err := tw.Write(body); err != nil {
		return fmt.Errorf("audit: tar %s: %w", name, err)
	}
	return nil
}

// copyTarFile writes one file of known size from r.
func copyTarFile(tw *tar.Writer, name string, size int64, r io.Reader, mtime time.Time) error {
	if err := tw.WriteHeader(tarHeader(name, size, mtime)); err != nil {
		return fmt.Errorf("audit: tar %s: %w", name, err)
	}
	if _, err := io.CopyN(tw, r, size); err != nil {
		return fmt.Errorf("audit: tar %s: %w", name, err)
	}
	return nil
}

// ReadReceipts calls fn with every line of a bundle's receipts.jsonl, in
// order, without verifying anything: for tools that process a bundle Verify
// has accepted.
func ReadReceipts(r io.Reader, fn func(ReceiptLine) error) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("audit: read receipts: %w", err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("audit: read receipts: no %s in the bundle", ReceiptsFile)
		}
		if err != nil {
			return fmt.Errorf("audit: read receipts: %w", err)
		}
		if h.Name != ReceiptsFile {
			continue
		}
		sc := bufio.NewScanner(tr)
		sc.Buffer(make([]byte, 0, 1<<20), maxLine)
		for sc.Scan() {
			var l ReceiptLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				return fmt.Errorf("audit: read receipts: %w", err)
			}
			if err := fn(l); err != nil {
				return err
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("audit: read receipts: %w", err)
		}
		return nil
	}
}
