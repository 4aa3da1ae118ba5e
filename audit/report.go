package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of Verify: what the bundle holds, every check's
// status, and the problems found (the first MaxProblemsPerCode of each code;
// Counts has them all).
type Report struct {
	OK       bool        `json:"ok"`
	ExitCode int         `json:"exit_code"`
	Strict   bool        `json:"strict"`
	Bundle   *BundleInfo `json:"bundle,omitempty"` // as the manifest claims it
	Keys     KeysInfo    `json:"keys"`

	Receipts       int64    `json:"receipts"`
	FirstSeq       int64    `json:"first_seq"`
	LastSeq        int64    `json:"last_seq"`
	Anchor         string   `json:"anchor,omitempty"` // prev_hash of the first receipt
	Checkpoints    int      `json:"checkpoints"`      // verified checkpoint notes
	TreeSize       int64    `json:"tree_size"`        // of the final checkpoint
	RootHash       string   `json:"root_hash,omitempty"`
	Proofs         int      `json:"proofs"` // consistency proofs checked
	Disclosures    int64    `json:"disclosures"`
	EvidenceFiles  int      `json:"evidence_files"`
	PolicyVersions []string `json:"policy_versions"`
	Files          int      `json:"files"`

	Checks   []Check        `json:"checks"`
	Problems []Problem      `json:"problems"`
	Counts   map[Code]int64 `json:"counts"`

	Bytes             int64   `json:"bytes"` // compressed bundle bytes read
	ElapsedSeconds    float64 `json:"elapsed_seconds"`
	ReceiptsPerSecond float64 `json:"receipts_per_second"`
}

// KeysInfo says which keys the report's signatures were checked with.
type KeysInfo struct {
	ReceiptKeys        []string `json:"receipt_keys"`
	Pinned             bool     `json:"pinned"` // false: taken from the bundle's keys.json
	CheckpointVerifier string   `json:"checkpoint_verifier"`
	CheckpointPinned   bool     `json:"checkpoint_pinned"`
}

// Check statuses.
const (
	StatusPass    = "pass"
	StatusFail    = "fail"
	StatusWarn    = "warn"
	StatusSkipped = "skipped"
)

// Check is one line of the summary: a check, its codes and how it went.
type Check struct {
	Name     string `json:"name"`
	Status   string `json:"status"`
	Detail   string `json:"detail"`
	Codes    []Code `json:"codes"`
	Problems int64  `json:"problems"`
}

func (v *verifier) report(elapsed time.Duration, bytesRead int64) Report {
	st := &v.st
	r := Report{Strict: v.opts.Strict, Receipts: st.lines, FirstSeq: st.firstSeq, LastSeq: st.lastSeq, Anchor: st.anchor,
		Checkpoints: len(v.checkpoints), Proofs: v.proofsUsed, Disclosures: st.disclosures, EvidenceFiles: len(v.evidence),
		PolicyVersions: slices.Sorted(maps.Keys(st.policy)), Files: v.nfiles, Problems: v.problems, Counts: v.counts,
		Bytes: bytesRead, ElapsedSeconds: elapsed.Seconds(),
		Keys: KeysInfo{ReceiptKeys: v.keyIDs, Pinned: v.keysPinned, CheckpointVerifier: v.checkpointKeyName, CheckpointPinned: v.checkpointKeyPinned}}
	if r.PolicyVersions == nil {
		r.PolicyVersions = []string{}
	}
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	if v.manifest != nil {
		b := v.manifest.Bundle
		r.Bundle = &b
	}
	if len(v.sizes) > 0 {
		final := v.sizes[len(v.sizes)-1]
		r.TreeSize, r.RootHash = final, v.roots[final][0].String()
	}
	if elapsed > 0 {
		r.ReceiptsPerSecond = float64(st.lines) / elapsed.Seconds()
	}

	pinned := func(p bool) string {
		if p {
			return "pinned"
		}
		return "from the bundle, not pinned"
	}
	anchor := "anchored at genesis"
	if st.anchor != "" && st.anchor != "sha256:0000000000000000000000000000000000000000000000000000000000000000" {
		anchor = fmt.Sprintf("anchored at prev_hash %s of seq %d", st.anchor, st.firstSeq)
	}
	inclusion := fmt.Sprintf("%d leaves recomputed from the receipts", st.lines)
	if v.a0 > 0 {
		inclusion += fmt.Sprintf(" and a frontier of %d", v.a0)
	}
	if r.TreeSize > 0 {
		inclusion += fmt.Sprintf(", proven in the signed tree of size %d", r.TreeSize)
	}
	checks := []struct {
		name, detail string
		codes        []Code
		skipped      bool
	}{
		{"bundle format", fmt.Sprintf("format %s, %d files", FormatVersion, v.nfiles), []Code{CodeMalformed}, false},
		{"manifest", fmt.Sprintf("%d file hashes, receipt count, seq range, policy bundles", r.manifestFiles()), []Code{CodeManifestHash}, false},
		{"checkpoint signatures", fmt.Sprintf("%d checkpoint%s, key %s (%s)", len(v.checkpoints), plural(int64(len(v.checkpoints))), keyName(v.checkpointKeyName), pinned(v.checkpointKeyPinned)), []Code{CodeCheckpointSignature}, false},
		{"receipt signatures", fmt.Sprintf("%d receipts, %d key%s (%s)", st.lines, len(v.keyIDs), plural(int64(len(v.keyIDs))), pinned(v.keysPinned)), []Code{CodeSignature, CodeUnknownKey}, false},
		{"payloads", fmt.Sprintf("%d receipts of tenant %s", st.parsed, r.tenant()), []Code{CodePayload, CodeTenant}, false},
		{"seq continuity", fmt.Sprintf("seq %d…%d", st.firstSeq, st.lastSeq), []Code{CodeSeqGap, CodeSeqDuplicate, CodeSeqReorder}, false},
		{"hash chain", anchor, []Code{CodeChain}, false},
		{"inclusion", inclusion, []Code{CodeInclusion}, false},
		{"checkpoint consistency", fmt.Sprintf("%d consistency proof%s, checkpoints in order, one root per size", v.proofsUsed, plural(int64(v.proofsUsed))), []Code{CodeConsistency, CodeCheckpointRollback, CodeCheckpointFork}, false},
		{"disclosures", fmt.Sprintf("%d disclosed values", st.disclosures), []Code{CodeDisclosure}, st.disclosures == 0 && v.counts[CodeDisclosure] == 0},
		{"evidence", fmt.Sprintf("%d evidence files", len(v.evidence)), []Code{CodeEvidence}, len(v.evidence) == 0},
		{"warnings", "extra files, time range, checkpoint age", []Code{CodeExtraFile, CodeOutOfRange, CodeStaleCheckpoint, CodeEmpty, CodeUnusedEvidence}, false},
	}
	exit, best := ExitOK, len(precedence)+1
	for _, c := range checks {
		ch := Check{Name: c.name, Status: StatusPass, Detail: c.detail, Codes: c.codes}
		for _, code := range c.codes {
			n := v.counts[code]
			ch.Problems += n
			if n == 0 || code.IsWarning() && !v.opts.Strict {
				continue
			}
			if rank(code) < best {
				exit, best = code.ExitCode(), rank(code)
			}
		}
		switch {
		case ch.Problems > 0 && c.name == "warnings" && !v.opts.Strict:
			ch.Status = StatusWarn
		case ch.Problems > 0:
			ch.Status = StatusFail
		case c.skipped:
			ch.Status, ch.Detail = StatusSkipped, "none in the bundle"
		}
		r.Checks = append(r.Checks, ch)
	}
	r.ExitCode, r.OK = exit, exit == ExitOK
	return r
}

func (r Report) manifestFiles() int {
	if r.Bundle == nil {
		return 0
	}
	return r.Files - 1
}

func (r Report) tenant() string {
	if r.Bundle == nil {
		return "?"
	}
	return r.Bundle.Tenant
}

func keyName(vkey string) string {
	if vkey == "" {
		return "(none)"
	}
	name, rest, _ := strings.Cut(vkey, "+")
	h, _, _ := strings.Cut(rest, "+")
	return name + "+" + h
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("audit: report: %w", err)
	}
	return nil
}

// WriteText writes the human summary: the bundle, one line per check, the
// problems found, and the verdict with throughput.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Bundle != nil {
		fmt.Fprintf(&b, "bundle  tenant %s, %s → %s, %d receipts, generated by %s\n", r.Bundle.Tenant,
			r.Bundle.From.Format(time.RFC3339), r.Bundle.To.Format(time.RFC3339), r.Bundle.ReceiptCount, r.Bundle.GeneratedBy)
	}
	marks := map[string]string{StatusPass: "✓", StatusFail: "✗", StatusWarn: "!", StatusSkipped: "-"}
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%s %-23s %s", marks[c.Status], c.Name, c.Detail)
		if c.Problems > 0 {
			fmt.Fprintf(&b, "  [%d problem%s]", c.Problems, plural(c.Problems))
		}
		b.WriteByte('\n')
	}
	if len(r.Problems) > 0 {
		b.WriteString("\nproblems:\n")
		shown := map[Code]int64{}
		for _, code := range Codes() {
			for _, p := range r.Problems {
				if p.Code == code {
					shown[code]++
					fmt.Fprintf(&b, "  %s\n", strings.TrimPrefix(p.Error(), "audit: "))
				}
			}
			if more := r.Counts[code] - shown[code]; more > 0 {
				fmt.Fprintf(&b, "  … and %d more %s\n", more, code)
			}
		}
	}
	verdict := "VERIFIED"
	if !r.OK {
		verdict = fmt.Sprintf("FAILED (exit %d)", r.ExitCode)
	}
	fmt.Fprintf(&b, "\n%s: %d receipts in %.2fs (%.0f receipts/s, %.1f MB/s)", verdict, r.Receipts, r.ElapsedSeconds, r.ReceiptsPerSecond,
		float64(r.Bytes)/1e6/max(r.ElapsedSeconds, 1e-9))
	if r.TreeSize > 0 {
		fmt.Fprintf(&b, "; final checkpoint: tree size %d, root %s", r.TreeSize, r.RootHash)
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int64) string {
	if n == 1 {
		return ""
	}
	return "s"
}
