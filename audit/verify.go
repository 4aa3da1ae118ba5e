package audit

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
	"github.com/companyos/companyos/projections/ledger"
)

// VerifyOptions configures Verify. The zero value verifies with the keys the
// bundle carries, on every core.
type VerifyOptions struct {
	// Strict makes warnings (extra files, receipts outside [from, to), a
	// final checkpoint older than the last receipt, …) failures (exit 21).
	Strict bool
	// Workers verifying signatures in parallel (optional, default GOMAXPROCS).
	Workers int
	// TrustedKeys pins the receipt keys (optional): signatures are checked
	// against these instead of the bundle's keys.json.
	TrustedKeys *keyfile.KeySet
	// TrustedCheckpointKey pins the checkpoint note verifier key
	// ("name+hash+base64", optional); default: keys.json's checkpoint_verifier.
	TrustedCheckpointKey string
	// MaxProblemsPerCode bounds how many problems of one code the report
	// lists (all are counted); optional, default 20.
	MaxProblemsPerCode int
	// Progress is called from time to time with receipts verified so far and
	// the manifest's receipt_count (optional).
	Progress func(done, total int)
}

// Validate checks the pinned keys.
func (o VerifyOptions) Validate() error {
	var errs []error
	if o.TrustedKeys != nil {
		if err := o.TrustedKeys.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("audit: trusted keys: %w", err))
		}
		if len(o.TrustedKeys.Keys) == 0 {
			errs = append(errs, errors.New("audit: trusted keys: empty key set"))
		}
	}
	if o.TrustedCheckpointKey != "" {
		if _, err := note.NewVerifier(o.TrustedCheckpointKey); err != nil {
			errs = append(errs, fmt.Errorf("audit: trusted checkpoint key: %w", err))
		}
	}
	if o.Workers < 0 || o.MaxProblemsPerCode < 0 {
		errs = append(errs, errors.New("audit: workers and max problems must not be negative"))
	}
	return errors.Join(errs...)
}

// Verify checks a bundle read from r, offline. It returns the report and
// nil when everything verifies; a *Failure (see ExitCode) listing the first
// problem of each failing kind when something does not; or another error
// when r itself fails (I/O) or opts are invalid. The report is filled in
// every case, with every problem found.
func Verify(r io.Reader, opts VerifyOptions) (Report, error) {
	return VerifyContext(context.Background(), r, opts)
}

// VerifyContext is Verify with cancellation.
func VerifyContext(ctx context.Context, r io.Reader, opts VerifyOptions) (Report, error) {
	if err := opts.Validate(); err != nil {
		return Report{ExitCode: ExitError}, err
	}
	if opts.Workers == 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.MaxProblemsPerCode == 0 {
		opts.MaxProblemsPerCode = 20
	}
	v := &verifier{opts: opts, counts: map[Code]int64{}, files: map[string]string{}, proofs: map[[2]int64]tlog.TreeProof{},
		roots: map[int64][]tlog.Hash{}, evidence: map[string]*evidenceFile{}}
	start := time.Now()
	in := &countingReader{r: r}
	err := v.read(ctx, in)
	if err == nil && in.err != nil && !errors.Is(in.err, io.EOF) {
		err = in.err // the reader failed, the gzip/tar layer only saw its symptom
	}
	if err != nil {
		rep := v.report(time.Since(start), in.n)
		rep.ExitCode = ExitError
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	v.finish()
	rep := v.report(time.Since(start), in.n)
	if rep.OK {
		return rep, nil
	}
	return rep, v.failure(rep.ExitCode)
}

type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

type evidenceFile struct {
	ok   bool // its SHA-256 is its name
	used atomic.Bool
}

type checkpointInfo struct {
	line      int64
	size      int64
	root      tlog.Hash
	createdAt time.Time
}

// verifier holds everything learned from the bundle. Only the receipt
// workers run concurrently with the read loop; they touch keys, manifest
// and evidence read-only and report through lineResults.
type verifier struct {
	opts     VerifyOptions
	problems []Problem
	counts   map[Code]int64

	manifest *Manifest
	files    map[string]string // name → sha256:hex, as read
	nfiles   int
	aborted  bool // reading stopped early: completeness checks are meaningless

	keysRaw, checkpointsRaw, proofsRaw []byte
	prepared                           bool
	keys                               map[string]ed25519.PublicKey
	keyIDs                             []string
	keysPinned, checkpointKeyPinned    bool
	checkpointKeyName                  string

	checkpoints []checkpointInfo      // verified, in file order
	roots       map[int64][]tlog.Hash // verified roots per size (a fork has several)
	sizes       []int64               // distinct verified sizes, ascending
	frontier    []tlog.Hash
	a0          int64 // leaves before the first exported receipt
	haveFront   bool
	proofs      map[[2]int64]tlog.TreeProof
	proofsUsed  int

	evidence     map[string]*evidenceFile
	receiptsRead bool

	st stream
}

// stream is the collector's sequential state over receipts.jsonl.
type stream struct {
	lines, parsed     int64
	firstSeq, lastSeq int64
	prevSeq           int64
	seen              bitset
	maxRel            int64
	chainStarted      bool
	prevPayloadHash   [32]byte
	prevKnown         bool
	prevHashSeq       int64
	anchor            string
	tree              *tree
	treeBroken        string
	cpNext            int
	lastGood          int64 // largest checkpoint size the recomputed tree matched
	lastCreatedAt     time.Time
	policy            map[string]bool
	lastPolicy        []byte
	disclosures       int64
	lastProgress      time.Time
}

func (v *verifier) add(p Problem) {
	v.counts[p.Code]++
	if v.counts[p.Code] <= int64(v.opts.MaxProblemsPerCode) {
		v.problems = append(v.problems, p)
	}
}

func (v *verifier) malformed(file string, format string, args ...any) {
	v.add(Problem{Code: CodeMalformed, File: file, Detail: fmt.Sprintf(format, args...)})
}

// read walks the tar stream. It returns an error only for I/O failures of
// the input; everything about the bundle's content becomes a problem.
func (v *verifier) read(ctx context.Context, in io.Reader) error {
	gz, err := gzip.NewReader(bufio.NewReaderSize(in, 1<<20))
	if err != nil {
		v.malformed("", "not a gzip stream: %v", err)
		v.aborted = true
		return nil
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Read the gzip stream to its end, so its checksums are checked.
			if _, err := io.Copy(io.Discard, gz); err != nil {
				v.malformed("", "after the tar stream: %v", err)
			}
			break
		}
		if err != nil {
			v.malformed("", "reading the tar stream: %v", err)
			v.aborted = true
			return nil
		}
		name := hdr.Name
		switch {
		case hdr.Typeflag == tar.TypeDir:
			continue
		case hdr.Typeflag != tar.TypeReg:
			v.malformed(name, "not a regular file (tar type %q)", hdr.Typeflag)
			continue
		case name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == "..":
			v.malformed(name, "not a clean relative path")
			continue
		case v.manifest == nil && name != ManifestFile:
			v.malformed(name, "the first file must be %s", ManifestFile)
			v.aborted = true
			return nil
		}
		if _, dup := v.files[name]; dup {
			v.malformed(name, "appears twice")
			v.aborted = true
			return nil
		}
		v.nfiles++
		h := sha256.New()
		body := io.TeeReader(tr, h)
		switch {
		case name == ManifestFile:
			raw, ok := v.readSmall(name, body, 16<<20)
			if !ok || !v.parseManifest(raw) {
				v.aborted = true
				return nil
			}
		case name == KeysFile:
			v.keysRaw, _ = v.readSmall(name, body, 16<<20)
		case name == CheckpointsFile:
			v.checkpointsRaw, _ = v.readSmall(name, body, 1<<30)
		case name == ProofsFile:
			v.proofsRaw, _ = v.readSmall(name, body, 1<<30)
		case name == ReceiptsFile:
			v.prepare()
			v.receiptsRead = true
			if err := v.streamReceipts(ctx, tr, h); err != nil {
				return err
			}
		case strings.HasPrefix(name, EvidenceDir):
			if v.receiptsRead {
				v.malformed(name, "evidence must come before %s", ReceiptsFile)
			}
			if _, err := io.Copy(io.Discard, body); err != nil {
				return v.readErr(name, err)
			}
			hexName := strings.TrimPrefix(name, EvidenceDir)
			v.evidence[hexName] = &evidenceFile{ok: hex.EncodeToString(h.Sum(nil)) == hexName}
		default:
			if _, err := io.Copy(io.Discard, body); err != nil {
				return v.readErr(name, err)
			}
		}
		if v.aborted {
			return nil
		}
		v.files[name] = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	v.prepare()
	return nil
}

// readErr turns a failure while reading a file's bytes into a malformed
// bundle (a truncated or corrupt gzip/tar stream) and stops.
func (v *verifier) readErr(name string, err error) error {
	v.malformed(name, "reading: %v", err)
	v.aborted = true
	return nil
}

func (v *verifier) readSmall(name string, r io.Reader, limit int64) ([]byte, bool) {
	raw, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		v.readErr(name, err)
		return nil, false
	}
	if int64(len(raw)) > limit {
		v.malformed(name, "larger than %d bytes", limit)
		v.aborted = true
		return nil, false
	}
	return raw, true
}

func (v *verifier) parseManifest(raw []byte) bool {
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		v.malformed(ManifestFile, "%v", err)
		return false
	}
	b := m.Bundle
	if b.Version != FormatVersion {
		v.malformed(ManifestFile, "bundle.version %q, this verifier reads %q", b.Version, FormatVersion)
		return false
	}
	if b.Tenant == "" {
		v.malformed(ManifestFile, "bundle.tenant is empty")
		return false
	}
	for field, pair := range map[string][2]string{"receipts": {b.Receipts, ReceiptsFile}, "keys": {b.Keys, KeysFile},
		"checkpoints": {b.Checkpoints, CheckpointsFile}, "proofs": {b.Proofs, ProofsFile}} {
		if pair[0] != pair[1] {
			v.malformed(ManifestFile, "bundle.%s is %q, format %s requires %q", field, pair[0], FormatVersion, pair[1])
		}
	}
	if !b.From.Before(b.To) {
		v.malformed(ManifestFile, "bundle.from (%s) is not before bundle.to (%s)", b.From.Format(time.RFC3339Nano), b.To.Format(time.RFC3339Nano))
	}
	if m.Files == nil {
		m.Files = map[string]string{}
	}
	v.manifest = &m
	return true
}

// prepare parses keys, checkpoints and proofs, once, before the receipts
// (or at the end of a bundle without receipts).
func (v *verifier) prepare() {
	if v.prepared || v.manifest == nil {
		return
	}
	v.prepared = true
	v.prepareKeys()
	v.prepareCheckpoints()
	v.prepareProofs()
}

func (v *verifier) prepareKeys() {
	var k Keys
	switch {
	case v.keysRaw == nil:
		v.malformed(KeysFile, "missing (it must come before %s)", ReceiptsFile)
	default:
		if err := json.Unmarshal(v.keysRaw, &k); err != nil {
			v.malformed(KeysFile, "%v", err)
		} else if err := k.KeySet.Validate(); err != nil {
			v.malformed(KeysFile, "%v", err)
		}
	}
	set := k.KeySet
	if v.opts.TrustedKeys != nil {
		set, v.keysPinned = *v.opts.TrustedKeys, true
	}
	v.keys = map[string]ed25519.PublicKey{}
	for _, e := range set.Keys {
		if pub, ok := set.Lookup(e.KeyID); ok && keyfile.KeyID(pub) == e.KeyID {
			v.keys[e.KeyID] = pub
			v.keyIDs = append(v.keyIDs, e.KeyID)
		}
	}
	vkey := k.CheckpointVerifier
	if v.opts.TrustedCheckpointKey != "" {
		vkey, v.checkpointKeyPinned = v.opts.TrustedCheckpointKey, true
	}
	if vkey == "" {
		v.malformed(KeysFile, "no checkpoint_verifier")
		return
	}
	if _, err := note.NewVerifier(vkey); err != nil {
		v.malformed(KeysFile, "checkpoint_verifier: %v", err)
		return
	}
	v.checkpointKeyName = vkey
}

func (v *verifier) prepareCheckpoints() {
	if v.checkpointsRaw == nil {
		v.malformed(CheckpointsFile, "missing (it must come before %s)", ReceiptsFile)
		return
	}
	var verifiers note.Verifiers
	if v.checkpointKeyName != "" {
		nv, _ := note.NewVerifier(v.checkpointKeyName) // checked in prepareKeys
		verifiers = note.VerifierList(nv)
	}
	maxSize := int64(0)
	forEachLine(v.checkpointsRaw, func(lineNo int64, line []byte) {
		var c CheckpointLine
		if err := json.Unmarshal(line, &c); err != nil {
			v.add(Problem{Code: CodeMalformed, File: CheckpointsFile, Line: lineNo, Detail: err.Error()})
			return
		}
		if verifiers == nil {
			v.add(Problem{Code: CodeCheckpointSignature, File: CheckpointsFile, Line: lineNo, Detail: "no checkpoint verifier key"})
			return
		}
		n, err := note.Open([]byte(c.Note), verifiers)
		if err != nil {
			v.add(Problem{Code: CodeCheckpointSignature, File: CheckpointsFile, Line: lineNo, Detail: fmt.Sprintf("checkpoint of size %d: %v", c.TreeSize, err)})
			return
		}
		tenant, size, root, err := ledger.ParseCheckpointText(n.Text)
		if err != nil {
			v.add(Problem{Code: CodeMalformed, File: CheckpointsFile, Line: lineNo, Detail: err.Error()})
			return
		}
		if tenant != v.manifest.Bundle.Tenant {
			v.add(Problem{Code: CodeTenant, File: CheckpointsFile, Line: lineNo, Detail: fmt.Sprintf("checkpoint of tenant %q in a bundle of %q", tenant, v.manifest.Bundle.Tenant)})
			return
		}
		if size != c.TreeSize || root != c.RootHash {
			v.add(Problem{Code: CodeMalformed, File: CheckpointsFile, Line: lineNo, Detail: fmt.Sprintf("tree_size/root_hash (%d, %s) differ from the signed note (%d, %s)", c.TreeSize, c.RootHash, size, root)})
			return
		}
		if size < 1 {
			v.add(Problem{Code: CodeMalformed, File: CheckpointsFile, Line: lineNo, Detail: "signed checkpoint of an empty tree"})
			return
		}
		// The ledger only ever signs larger trees, and one root per size.
		if size < maxSize {
			v.add(Problem{Code: CodeCheckpointRollback, File: CheckpointsFile, Line: lineNo,
				Detail: fmt.Sprintf("checkpoint of size %d after one of size %d: the log was presented shorter than before", size, maxSize)})
		}
		maxSize = max(maxSize, size)
		known := v.roots[size]
		switch {
		case len(known) == 0:
			v.sizes = append(v.sizes, size)
		case slices.Contains(known, root):
			return // the same checkpoint again
		default:
			v.add(Problem{Code: CodeCheckpointFork, File: CheckpointsFile, Line: lineNo,
				Detail: fmt.Sprintf("two signed roots for tree size %d: %s and %s", size, known[0], root)})
		}
		v.roots[size] = append(known, root)
		v.checkpoints = append(v.checkpoints, checkpointInfo{line: lineNo, size: size, root: root, createdAt: c.CreatedAt})
	})
	slices.Sort(v.sizes)
}

func (v *verifier) prepareProofs() {
	if v.proofsRaw == nil {
		v.malformed(ProofsFile, "missing (it must come before %s)", ReceiptsFile)
		return
	}
	forEachLine(v.proofsRaw, func(lineNo int64, line []byte) {
		var p ProofLine
		if err := json.Unmarshal(line, &p); err != nil {
			v.add(Problem{Code: CodeMalformed, File: ProofsFile, Line: lineNo, Detail: err.Error()})
			return
		}
		switch p.Type {
		case ProofFrontier:
			if v.haveFront {
				v.add(Problem{Code: CodeMalformed, File: ProofsFile, Line: lineNo, Detail: "a second frontier"})
				return
			}
			if _, err := newTree(p.TreeSize, p.Hashes); err != nil {
				v.add(Problem{Code: CodeMalformed, File: ProofsFile, Line: lineNo, Detail: "frontier: " + err.Error()})
				return
			}
			v.haveFront, v.a0, v.frontier = true, p.TreeSize, p.Hashes
		case ProofConsistency:
			if p.OldSize < 1 || p.OldSize >= p.NewSize {
				v.add(Problem{Code: CodeMalformed, File: ProofsFile, Line: lineNo, Detail: fmt.Sprintf("consistency proof %d → %d: need 1 ≤ old < new", p.OldSize, p.NewSize)})
				return
			}
			v.proofs[[2]int64{p.OldSize, p.NewSize}] = p.Hashes
		default:
			v.add(Problem{Code: CodeMalformed, File: ProofsFile, Line: lineNo, Detail: fmt.Sprintf("unknown proof type %q", p.Type)})
		}
	})
	if !v.haveFront {
		v.malformed(ProofsFile, "no frontier line")
	}
}

func forEachLine(raw []byte, fn func(lineNo int64, line []byte)) {
	var n int64
	for len(raw) > 0 {
		n++
		line, rest, _ := bytes.Cut(raw, []byte("\n"))
		raw = rest
		if len(line) > 0 {
			fn(n, line)
		}
	}
}

// ---- receipts.jsonl: read → verify in parallel → check in order ----

const (
	batchBytes = 256 << 10
	maxLine    = 64 << 20
)

type batch struct {
	data      []byte // complete lines
	firstLine int64
	arena     []byte // decoded base64 of data's lines
	results   []lineResult
	done      chan struct{}
}

// lineResult is what a worker learned about one line; slices point into
// the batch's data or arena.
type lineResult struct {
	lineNo      int64
	haveLeaf    bool // the payload bytes were decoded
	parsed      bool // the payload decoded as a receipt
	seq         int64
	id          []byte
	prevRaw     []byte
	prevHash    [32]byte
	prevOK      bool
	payloadHash [32]byte
	leafHash    tlog.Hash
	createdAt   time.Time
	policy      []byte
	disclosures int
	problems    []Problem
}

func (r *lineResult) problem(code Code, format string, args ...any) {
	p := Problem{Code: code, Seq: r.seq, ID: string(r.id), Detail: fmt.Sprintf(format, args...)}
	if r.seq == 0 {
		p.File, p.Line = ReceiptsFile, r.lineNo
	}
	r.problems = append(r.problems, p)
}

// worker owns per-goroutine scratch space.
type worker struct {
	v    *verifier
	line parsedLine
	rec  slimReceipt
	pae  []byte
	leaf hash.Hash
}

func (v *verifier) streamReceipts(ctx context.Context, r io.Reader, h hash.Hash) error {
	st := &v.st
	st.prevSeq = -1
	st.policy = map[string]bool{}
	if !v.haveFront {
		v.haveFront = true // reported as malformed; check the rest from seq 1
	}
	var err error
	if st.tree, err = newTree(v.a0, v.frontier); err != nil {
		st.tree, _ = newTree(0, nil)
	}
	// Checkpoints before the first exported leaf cannot be recomputed; one
	// exactly at it is the frontier's root.
	for st.cpNext < len(v.sizes) && v.sizes[st.cpNext] <= v.a0 {
		if v.sizes[st.cpNext] == v.a0 {
			v.compareRoot(v.a0)
		}
		st.cpNext++
	}
	st.lastGood = v.a0

	workers := v.opts.Workers
	free := make(chan *batch, 2*workers+2)
	for range cap(free) {
		free <- &batch{data: make([]byte, 0, batchBytes)}
	}
	work := make(chan *batch, workers)
	ordered := make(chan *batch, cap(free))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{v: v, leaf: sha256.New()}
			for b := range work {
				w.check(b)
				close(b.done)
			}
		}()
	}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for b := range ordered {
			<-b.done
			v.collect(b)
			free <- b
		}
	}()

	var carry []byte
	var lineNo int64 = 1
	var readErr error
	eof := false
	for !eof && readErr == nil {
		if err := ctx.Err(); err != nil {
			readErr = err
			break
		}
		b := <-free
		// Room for the unfinished line carried over plus a batch of new bytes.
		if cap(b.data) < len(carry)+batchBytes {
			b.data = make([]byte, 0, len(carry)+batchBytes)
		}
		b.data = append(b.data[:0], carry...)
		for len(b.data) < cap(b.data) {
			n, err := r.Read(b.data[len(b.data):cap(b.data)])
			h.Write(b.data[len(b.data) : len(b.data)+n])
			b.data = b.data[:len(b.data)+n]
			if errors.Is(err, io.EOF) {
				eof = true
				break
			}
			if err != nil {
				readErr = err
				break
			}
		}
		cut := bytes.LastIndexByte(b.data, '\n') + 1
		if eof {
			cut = len(b.data) // a last line without newline still counts
		}
		if cut == 0 && readErr == nil {
			// No line ends in this batch: keep reading into a larger one.
			if len(b.data) >= maxLine {
				readErr = fmt.Errorf("a line longer than %d bytes", maxLine)
			}
			carry = append(carry[:0], b.data...)
			free <- b
			continue
		}
		carry = append(carry[:0], b.data[cut:]...)
		b.data = b.data[:cut]
		b.firstLine = lineNo
		lineNo += int64(bytes.Count(b.data, []byte("\n")))
		if eof && len(b.data) > 0 && b.data[len(b.data)-1] != '\n' {
			lineNo++
		}
		b.done = make(chan struct{})
		ordered <- b
		work <- b
	}
	close(work)
	close(ordered)
	wg.Wait()
	<-collected
	if readErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return v.readErr(ReceiptsFile, readErr)
	}
	return nil
}

// check verifies every line of b: everything that needs no other line.
func (w *worker) check(b *batch) {
	if cap(b.arena) < len(b.data) {
		b.arena = make([]byte, 0, len(b.data)+len(b.data)/4)
	}
	arena := b.arena[:0]
	b.results = b.results[:0]
	data := b.data
	for lineNo := b.firstLine; len(data) > 0; lineNo++ {
		line, rest, _ := bytes.Cut(data, []byte("\n"))
		data = rest
		b.results = append(b.results, lineResult{lineNo: lineNo})
		r := &b.results[len(b.results)-1]
		arena = w.checkLine(line, r, arena)
	}
}

func (w *worker) checkLine(line []byte, r *lineResult, arena []byte) []byte {
	v, p, rec := w.v, &w.line, &w.rec
	var err error
	if arena, err = parseLine(line, p, arena); err != nil {
		r.problem(CodeMalformed, "not a receipt line: %v", err)
		return arena
	}
	r.seq, r.id = p.seq, p.id

	// Signatures, as events.Envelope.Verify: every signature by a known key
	// must verify, and at least one must be by a known key.
	if string(p.payloadType) != events.PayloadType {
		r.problem(CodePayload, "payloadType %q, want %q", p.payloadType, events.PayloadType)
	}
	w.pae = append(w.pae[:0], "DSSEv1 "...)
	w.pae = strconv.AppendInt(w.pae, int64(len(p.payloadType)), 10)
	w.pae = append(append(append(w.pae, ' '), p.payloadType...), ' ')
	w.pae = strconv.AppendInt(w.pae, int64(len(p.payload)), 10)
	w.pae = append(append(w.pae, ' '), p.payload...)
	known := 0
	for _, s := range p.sigs {
		pub, ok := v.keys[string(s.keyID)]
		if !ok {
			continue
		}
		known++
		if !ed25519.Verify(pub, w.pae, s.sig) {
			r.problem(CodeSignature, "signature by %s does not verify", s.keyID)
		}
	}
	switch {
	case len(p.sigs) == 0:
		r.problem(CodeSignature, "envelope has no signatures")
	case known == 0:
		ids := make([]string, len(p.sigs))
		for i, s := range p.sigs {
			ids[i] = string(s.keyID)
		}
		r.problem(CodeUnknownKey, "signed by %s, not in the key set", strings.Join(ids, ", "))
	}

	// Hashes for the chain and the tree.
	r.payloadHash = sha256.Sum256(p.payload)
	w.leaf.Reset()
	w.leaf.Write([]byte{0})
	w.leaf.Write(p.payload)
	w.leaf.Sum(r.leafHash[:0])
	r.haveLeaf = true

	if err := parsePayload(p.payload, rec); err != nil {
		r.problem(CodePayload, "payload is not a receipt: %v", err)
		return arena
	}
	r.parsed = true
	if int64(rec.seq) != p.seq || !bytes.Equal(rec.id, p.id) {
		r.problem(CodePayload, "line says seq %d id %s, the signed payload seq %d id %s", p.seq, p.id, rec.seq, rec.id)
	}
	r.seq, r.id = int64(rec.seq), rec.id
	m := &v.manifest.Bundle
	if string(rec.tenant) != m.Tenant {
		r.problem(CodeTenant, "receipt of tenant %q in a bundle of %q", rec.tenant, m.Tenant)
	}
	r.prevRaw = rec.prevHash
	if len(rec.prevHash) == len("sha256:")+64 && bytes.HasPrefix(rec.prevHash, []byte("sha256:")) && isLowerHex(rec.prevHash[7:]) {
		_, _ = hex.Decode(r.prevHash[:], rec.prevHash[7:])
		r.prevOK = true
	}
	r.createdAt = rec.createdAt
	if rec.createdAt.Before(m.From) || !rec.createdAt.Before(m.To) {
		r.problem(CodeOutOfRange, "created_at %s is outside [%s, %s)", rec.createdAt.Format(time.RFC3339Nano), m.From.Format(time.RFC3339Nano), m.To.Format(time.RFC3339Nano))
	}
	r.policy = rec.policyVersion

	if len(p.disclosures) > 0 {
		full := events.Receipt{ID: string(rec.id), Selective: rec.selective}
		for _, d := range p.disclosures {
			if err := events.VerifyDisclosure(full, d); err != nil {
				r.problem(CodeDisclosure, "%v", err)
			}
		}
		r.disclosures = len(p.disclosures)
	}
	if len(v.evidence) > 0 {
		if e := v.evidence[strings.TrimPrefix(string(rec.evidenceHash), "sha256:")]; e != nil {
			e.used.Store(true)
			if !e.ok {
				r.problem(CodeEvidence, "%s%s does not hash to the receipt's evidence_hash %s", EvidenceDir, strings.TrimPrefix(string(rec.evidenceHash), "sha256:"), rec.evidenceHash)
			}
		}
	}
	return arena
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// collect runs the checks that need order: seq continuity, the prev_hash
// chain, and the Merkle tree against the checkpoints.
func (v *verifier) collect(b *batch) {
	st := &v.st
	base := v.a0 + 1
	for i := range b.results {
		r := &b.results[i]
		st.lines++
		for _, p := range r.problems {
			v.add(p)
		}
		if r.parsed {
			v.checkSeq(r, base)
			v.checkChain(r)
			st.parsed++
			if !bytes.Equal(r.policy, st.lastPolicy) {
				st.policy[string(r.policy)] = true
				st.lastPolicy = append(st.lastPolicy[:0], r.policy...)
			}
			if r.createdAt.After(st.lastCreatedAt) {
				st.lastCreatedAt = r.createdAt
			}
			st.disclosures += int64(r.disclosures)
		}
		if r.haveLeaf {
			st.prevPayloadHash, st.prevKnown, st.prevHashSeq = r.payloadHash, true, r.seq
			if st.treeBroken == "" {
				st.tree.append(r.leafHash)
				for st.cpNext < len(v.sizes) && v.sizes[st.cpNext] == st.tree.n {
					v.compareRoot(st.tree.n)
					st.cpNext++
				}
			}
		} else {
			st.prevKnown = false
			if st.treeBroken == "" {
				st.treeBroken = fmt.Sprintf("%s line %d has no readable payload, so the tree cannot be recomputed", ReceiptsFile, r.lineNo)
			}
		}
	}
	if p := v.opts.Progress; p != nil && time.Since(st.lastProgress) > 100*time.Millisecond {
		st.lastProgress = time.Now()
		p(int(st.lines), int(v.manifest.Bundle.ReceiptCount))
	}
}

func (v *verifier) checkSeq(r *lineResult, base int64) {
	st := &v.st
	seq := r.seq
	if st.parsed == 0 {
		st.firstSeq = seq
	}
	st.lastSeq = seq
	defer func() { st.prevSeq = seq }()
	rel := seq - base
	switch {
	case rel < 0:
		v.add(Problem{Code: CodeSeqDuplicate, Seq: seq, ID: string(r.id), Detail: fmt.Sprintf("seq %d is before the exported range, which starts at %d", seq, base)})
		return
	case rel > st.seen.limit(st.lines):
		v.add(Problem{Code: CodeSeqGap, Seq: seq, ID: string(r.id), Detail: fmt.Sprintf("seq %d is far beyond the exported range starting at %d", seq, base)})
		return
	case st.seen.has(rel):
		v.add(Problem{Code: CodeSeqDuplicate, Seq: seq, ID: string(r.id), Detail: fmt.Sprintf("seq %d appears again", seq)})
		return
	}
	st.seen.set(rel)
	st.maxRel = max(st.maxRel, rel)
	if st.prevSeq >= 0 && seq < st.prevSeq {
		v.add(Problem{Code: CodeSeqReorder, Seq: seq, ID: string(r.id), Detail: fmt.Sprintf("seq %d comes after seq %d", seq, st.prevSeq)})
	}
}

func (v *verifier) checkChain(r *lineResult) {
	st := &v.st
	if !st.chainStarted {
		st.chainStarted = true
		if r.seq == 1 || v.a0 == 0 {
			if string(r.prevRaw) != events.GenesisHash {
				v.add(Problem{Code: CodeChain, Seq: r.seq, ID: string(r.id), Detail: fmt.Sprintf("the first receipt of the log must have prev_hash %s, has %s", events.GenesisHash, r.prevRaw)})
			}
			st.anchor = events.GenesisHash
		} else {
			// The anchor: accepted as given; the receipt carrying it is
			// proven to be leaf seq−1 of the signed tree like every other.
			st.anchor = string(r.prevRaw)
		}
		return
	}
	if !st.prevKnown {
		return // the previous line had no payload: reported already
	}
	if !r.prevOK || r.prevHash != st.prevPayloadHash {
		v.add(Problem{Code: CodeChain, Seq: r.seq, ID: string(r.id),
			Detail: fmt.Sprintf("prev_hash %s is not the hash of the previous receipt (seq %d): sha256:%x", r.prevRaw, st.prevHashSeq, st.prevPayloadHash)})
	}
}

// compareRoot checks the recomputed tree of n leaves against every signed
// root of size n.
func (v *verifier) compareRoot(n int64) {
	st := &v.st
	var root tlog.Hash
	if st.tree != nil && st.tree.n == n {
		root = st.tree.root()
	} else {
		t, err := newTree(v.a0, v.frontier)
		if err != nil {
			return
		}
		root = t.root()
	}
	match := false
	for _, want := range v.roots[n] {
		if want == root {
			match = true
			continue
		}
		v.add(Problem{Code: CodeInclusion, Detail: fmt.Sprintf("the receipts do not hash to the signed root %s of the checkpoint of size %d: they differ from the log in seq %s",
			want, n, seqRange(st.lastGood+1, n))})
	}
	if match && len(v.roots[n]) == 1 {
		st.lastGood = n
	}
}

// finish runs the checks that need the whole bundle.
func (v *verifier) finish() {
	if v.manifest == nil {
		if !v.aborted {
			v.malformed(ManifestFile, "missing")
		}
		return
	}
	v.checkFiles()
	if v.aborted {
		return
	}
	if !v.receiptsRead {
		v.malformed(ReceiptsFile, "missing")
		return
	}
	st := &v.st
	m := &v.manifest.Bundle
	if st.lines != m.ReceiptCount {
		v.add(Problem{Code: CodeManifestHash, File: ManifestFile, Detail: fmt.Sprintf("receipt_count is %d, %s has %d lines", m.ReceiptCount, ReceiptsFile, st.lines)})
	}
	if st.parsed > 0 && (st.firstSeq != m.FirstSeq || st.lastSeq != m.LastSeq) {
		v.add(Problem{Code: CodeManifestHash, File: ManifestFile, Detail: fmt.Sprintf("first_seq…last_seq is %d…%d, %s has %d…%d", m.FirstSeq, m.LastSeq, ReceiptsFile, st.firstSeq, st.lastSeq)})
	}
	v.checkPolicies()
	if st.lines == 0 {
		v.add(Problem{Code: CodeEmpty, File: ReceiptsFile, Detail: "the bundle holds no receipts"})
	}
	v.checkGaps()
	v.checkTail()
	v.checkConsistency()
	for name, e := range v.evidence {
		if !e.used.Load() {
			v.add(Problem{Code: CodeUnusedEvidence, File: EvidenceDir + name, Detail: "no receipt has this evidence_hash"})
		}
	}
}

func (v *verifier) checkFiles() {
	for _, name := range slices.Sorted(maps.Keys(v.manifest.Files)) {
		want := v.manifest.Files[name]
		got, ok := v.files[name]
		switch {
		case !ok && !v.aborted:
			v.add(Problem{Code: CodeManifestHash, File: name, Detail: "listed in the manifest, missing from the bundle"})
		case ok && got != want:
			v.add(Problem{Code: CodeManifestHash, File: name, Detail: fmt.Sprintf("manifest says %s, content is %s", want, got)})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(v.files)) {
		if _, listed := v.manifest.Files[name]; !listed && name != ManifestFile {
			v.add(Problem{Code: CodeExtraFile, File: name, Detail: "not listed in the manifest"})
		}
	}
	for field, p := range map[string]*string{"sbom": v.manifest.Bundle.SBOM, "attestations": v.manifest.Bundle.Attestations} {
		if p != nil {
			if _, ok := v.files[*p]; !ok && !v.aborted {
				v.add(Problem{Code: CodeManifestHash, File: *p, Detail: fmt.Sprintf("bundle.%s names a file the bundle does not have", field)})
			}
		}
	}
}

func (v *verifier) checkPolicies() {
	seen := map[PolicyBundle]bool{}
	for pv := range v.st.policy {
		seen[splitPolicyVersion(pv)] = true
	}
	listed := map[PolicyBundle]bool{}
	for _, pb := range v.manifest.Bundle.PolicyBundles {
		listed[pb] = true
	}
	for pb := range seen {
		if !listed[pb] {
			v.add(Problem{Code: CodeManifestHash, File: ManifestFile, Detail: fmt.Sprintf("policy bundle %s+%s is used by receipts but not listed in policy_bundles", pb.Version, pb.Hash)})
		}
	}
	for pb := range listed {
		if !seen[pb] {
			v.add(Problem{Code: CodeManifestHash, File: ManifestFile, Detail: fmt.Sprintf("policy_bundles lists %s+%s, which no receipt uses", pb.Version, pb.Hash)})
		}
	}
}

// checkGaps reports every seq of the expected range that never appeared.
func (v *verifier) checkGaps() {
	st := &v.st
	base := v.a0 + 1
	upper := st.maxRel
	if last := v.manifest.Bundle.LastSeq - base; last > upper && last <= st.seen.limit(st.lines) {
		upper = last
	}
	if st.parsed == 0 {
		return
	}
	for rel := int64(0); rel <= upper; rel++ {
		if st.seen.has(rel) {
			continue
		}
		from := rel
		for rel+1 <= upper && !st.seen.has(rel+1) {
			rel++
		}
		v.add(Problem{Code: CodeSeqGap, Seq: base + from, Detail: fmt.Sprintf("seq %s missing", seqRange(base+from, base+rel))})
	}
}

// checkTail proves the recomputed tree is a prefix of the final checkpoint.
func (v *verifier) checkTail() {
	st := &v.st
	if st.lines == 0 {
		return
	}
	if st.treeBroken != "" {
		v.add(Problem{Code: CodeInclusion, Detail: st.treeBroken})
		return
	}
	n := st.tree.n
	if len(v.sizes) == 0 {
		v.add(Problem{Code: CodeInclusion, Detail: fmt.Sprintf("no verified checkpoint: the %d receipts are not proven to be in the log", st.lines)})
		return
	}
	final := v.sizes[len(v.sizes)-1]
	switch {
	case final < n:
		v.add(Problem{Code: CodeInclusion, Seq: final + 1, Detail: fmt.Sprintf("seq %s not covered by any checkpoint (the largest has size %d)", seqRange(final+1, n), final)})
	case final > n:
		p, ok := v.proofs[[2]int64{n, final}]
		if !ok {
			v.add(Problem{Code: CodeInclusion, Detail: fmt.Sprintf("no consistency proof from the recomputed tree (size %d) to the final checkpoint (size %d)", n, final)})
			return
		}
		v.proofsUsed++
		root := st.tree.root()
		for _, want := range v.roots[final] {
			if err := tlog.CheckTree(p, final, want, n, root); err != nil {
				v.add(Problem{Code: CodeInclusion, Detail: fmt.Sprintf("the receipts are not a prefix of the final checkpoint of size %d (%v): they differ from the log in seq %s", final, err, seqRange(st.lastGood+1, n))})
			}
		}
	}
}

// checkConsistency checks each verified checkpoint against the next larger one.
func (v *verifier) checkConsistency() {
	for i := 0; i+1 < len(v.sizes); i++ {
		oldN, newN := v.sizes[i], v.sizes[i+1]
		p, ok := v.proofs[[2]int64{oldN, newN}]
		if !ok {
			v.add(Problem{Code: CodeConsistency, File: ProofsFile, Detail: fmt.Sprintf("no consistency proof from checkpoint %d to %d", oldN, newN)})
			continue
		}
		v.proofsUsed++
		for _, oldRoot := range v.roots[oldN] {
			for _, newRoot := range v.roots[newN] {
				if err := tlog.CheckTree(p, newN, newRoot, oldN, oldRoot); err != nil {
					v.add(Problem{Code: CodeConsistency, File: ProofsFile, Detail: fmt.Sprintf("checkpoint %d (%s) is not a prefix of checkpoint %d (%s): %v", oldN, oldRoot, newN, newRoot, err)})
				}
			}
		}
	}
	if len(v.checkpoints) > 0 && v.st.lines > 0 {
		final := v.checkpoints[0]
		for _, c := range v.checkpoints {
			if c.size >= final.size {
				final = c
			}
		}
		if !final.createdAt.IsZero() && final.createdAt.Before(v.st.lastCreatedAt) {
			v.add(Problem{Code: CodeStaleCheckpoint, File: CheckpointsFile, Line: final.line,
				Detail: fmt.Sprintf("the final checkpoint was signed at %s, before the last receipt (%s)", final.createdAt.Format(time.RFC3339Nano), v.st.lastCreatedAt.Format(time.RFC3339Nano))})
		}
	}
}

// failure is the error for a report that did not verify.
func (v *verifier) failure(exit int) error {
	f := &Failure{ExitCode: exit}
	for _, c := range Codes() {
		if c.IsWarning() && !v.opts.Strict {
			continue
		}
		for _, p := range v.problems {
			if p.Code == c {
				f.Problems = append(f.Problems, p)
				break
			}
		}
	}
	return f
}

// seqRange formats "5" or "5…9".
func seqRange(from, to int64) string {
	if from >= to {
		return strconv.FormatInt(from, 10)
	}
	return fmt.Sprintf("%d…%d", from, to)
}

// bitset is a growable set of small non-negative integers.
type bitset []uint64

func (b bitset) has(i int64) bool {
	return i>>6 < int64(len(b)) && b[i>>6]&(1<<(i&63)) != 0
}

func (b *bitset) set(i int64) {
	for i>>6 >= int64(len(*b)) {
		*b = append(*b, 0)
	}
	(*b)[i>>6] |= 1 << (i & 63)
}

// limit bounds how far a seq may be from the range start before it is
// reported without being tracked (a tampered seq must not cost memory).
func (bitset) limit(lines int64) int64 { return lines + 1<<20 }
