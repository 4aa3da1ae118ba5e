package audit

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Code is the stable identifier of one kind of finding. Codes are part of
// the CLI contract (JSON report, exit codes): never rename one.
//
// A Code is also an error, so errors.Is(err, audit.CodeSignature) tells
// whether a verification error contains a signature failure.
type Code string

// Failure codes. Each has its own exit code (see ExitCode); codes that share
// an exit code are variants of one check.
const (
	CodeManifestHash        Code = "manifest-hash"        // a file's SHA-256 or the receipt count differs from manifest.json (exit 10)
	CodeSignature           Code = "signature"            // a DSSE signature does not verify (exit 11)
	CodeUnknownKey          Code = "unknown-key"          // no signature is by a key in the key set (exit 12)
	CodePayload             Code = "payload"              // the payload is not a receipt, or the line disagrees with it (exit 13)
	CodeTenant              Code = "tenant-mismatch"      // a receipt or checkpoint of another tenant (exit 13)
	CodeSeqGap              Code = "seq-gap"              // a seq is missing (exit 14)
	CodeSeqDuplicate        Code = "seq-duplicate"        // a seq appears twice (exit 14)
	CodeSeqReorder          Code = "seq-reorder"          // a seq appears after a larger one (exit 14)
	CodeChain               Code = "chain"                // prev_hash is not the hash of the previous payload (exit 15)
	CodeInclusion           Code = "inclusion"            // receipts are not the leaves of the signed tree (exit 16)
	CodeConsistency         Code = "consistency"          // a consistency proof between checkpoints fails (exit 17)
	CodeCheckpointRollback  Code = "checkpoint-rollback"  // a checkpoint smaller than one issued before it (exit 17)
	CodeCheckpointFork      Code = "checkpoint-fork"      // two signed roots for the same tree size (exit 17)
	CodeCheckpointSignature Code = "checkpoint-signature" // a checkpoint note does not verify (exit 18)
	CodeDisclosure          Code = "disclosure"           // a disclosed value does not match its commitment (exit 19)
	CodeMalformed           Code = "malformed"            // the bundle cannot be read as format v1 (exit 20)
	CodeEvidence            Code = "evidence"             // an evidence file does not hash to its receipt's evidence_hash (exit 22)
)

// Warning codes: reported, but a failure (exit 21) only with Strict.
const (
	CodeExtraFile       Code = "extra-file"       // a file the manifest does not list
	CodeOutOfRange      Code = "out-of-range"     // a receipt's created_at is outside the manifest's [from, to)
	CodeStaleCheckpoint Code = "stale-checkpoint" // the final checkpoint was created before the last receipt
	CodeEmpty           Code = "empty"            // the bundle holds no receipts
	CodeUnusedEvidence  Code = "unused-evidence"  // an evidence file no receipt refers to
)

// Exit codes of `companyos verify` besides the per-code ones.
const (
	ExitOK            = 0
	ExitError         = 1  // the bundle could not be read (I/O), or an internal error
	ExitUsage         = 2  // bad flags
	ExitStrictWarning = 21 // a warning under --strict
)

var exitCodes = map[Code]int{
	CodeManifestHash: 10, CodeSignature: 11, CodeUnknownKey: 12, CodePayload: 13, CodeTenant: 13,
	CodeSeqGap: 14, CodeSeqDuplicate: 14, CodeSeqReorder: 14, CodeChain: 15, CodeInclusion: 16,
	CodeConsistency: 17, CodeCheckpointRollback: 17, CodeCheckpointFork: 17, CodeCheckpointSignature: 18,
	CodeDisclosure: 19, CodeMalformed: 20, CodeEvidence: 22,
}

// precedence orders failure codes by how fundamental they are: when several
// kinds fail, the exit code is the first one's. One tampered byte usually
// trips several checks (a flipped payload byte breaks the signature, the next
// prev_hash and the tree root); the root cause comes first.
var precedence = []Code{
	CodeMalformed, CodeManifestHash, CodeCheckpointSignature, CodeUnknownKey, CodeSignature,
	CodePayload, CodeTenant, CodeSeqGap, CodeSeqDuplicate, CodeSeqReorder, CodeChain,
	CodeCheckpointFork, CodeCheckpointRollback, CodeConsistency, CodeInclusion, CodeDisclosure, CodeEvidence,
}

// Codes lists every code, failures in precedence order, then warnings.
func Codes() []Code {
	return append(slices.Clone(precedence), CodeExtraFile, CodeOutOfRange, CodeStaleCheckpoint, CodeEmpty, CodeUnusedEvidence)
}

// Error makes a Code usable as an errors.Is target.
func (c Code) Error() string { return "audit: " + string(c) }

// IsWarning reports whether c is a warning (a failure only under Strict).
func (c Code) IsWarning() bool { _, ok := exitCodes[c]; return !ok }

// ExitCode is the process exit code for a failure of kind c; warnings map to
// ExitStrictWarning.
func (c Code) ExitCode() int {
	if n, ok := exitCodes[c]; ok {
		return n
	}
	return ExitStrictWarning
}

func rank(c Code) int {
	if i := slices.Index(precedence, c); i >= 0 {
		return i
	}
	return len(precedence)
}

// Problem is one finding: what failed, where (receipt seq and id, or file and
// line), and why. It is an error that unwraps to its Code.
type Problem struct {
	Code   Code   `json:"code"`
	Seq    int64  `json:"seq,omitempty"`
	ID     string `json:"id,omitempty"`
	File   string `json:"file,omitempty"`
	Line   int64  `json:"line,omitempty"`
	Detail string `json:"detail"`
}

func (p Problem) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "audit: %s", p.Code)
	if p.File != "" {
		fmt.Fprintf(&b, " %s", p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
	}
	if p.Seq != 0 {
		fmt.Fprintf(&b, " seq %d", p.Seq)
	}
	if p.ID != "" {
		fmt.Fprintf(&b, " (%s)", p.ID)
	}
	return b.String() + ": " + p.Detail
}

// Unwrap returns the Code, so errors.Is(p, CodeChain) holds for a chain problem.
func (p Problem) Unwrap() error { return p.Code }

// Failure is the error Verify returns when a bundle does not verify. It
// carries the first problem of every failing code (and, under Strict, of
// every warning), most fundamental first; the full list is in the Report.
type Failure struct {
	ExitCode int
	Problems []Problem
}

func (f *Failure) Error() string {
	codes := make([]string, len(f.Problems))
	for i, p := range f.Problems {
		codes[i] = string(p.Code)
	}
	return fmt.Sprintf("audit: bundle does not verify (%s): %v", strings.Join(codes, ", "), f.Problems[0])
}

// Unwrap lets errors.Is and errors.As see every problem (and its Code).
func (f *Failure) Unwrap() []error {
	out := make([]error, len(f.Problems))
	for i, p := range f.Problems {
		out[i] = p
	}
	return out
}

// ExitCode maps an error from Verify to the exit code of `companyos verify`:
// 0 for nil, the Failure's code, or ExitError for anything else (I/O).
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var f *Failure
	if errors.As(err, &f) {
		return f.ExitCode
	}
	return ExitError
}
