package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/metering"
)

const dlqUsage = `Usage: companyos dlq <list|show|replay> [flags]

Inspects and re-drives the dead-letter topic (companyos.dlq.v1), whoever
wrote to it: the graph projector, the ledger, the cogs projector, the command
processor.

  list     one line per record: position, time, attempt, source, key, reason
  show     one record: headers and value (pretty-printed JSON)
  replay   re-produce matching records to their source topic, once each

Run "companyos dlq <command> --help" for its flags.
`

// runDLQ runs `companyos dlq …`.
func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return 2
	}
	switch args[0] {
	case "list":
		return runDLQList(ctx, args[1:], stdout, stderr)
	case "show":
		return runDLQShow(ctx, args[1:], stdout, stderr)
	case "replay":
		return runDLQReplay(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, dlqUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "companyos dlq: unknown command %q\n\n%s", args[0], dlqUsage)
		return 2
	}
}

// dlqFlags are the flags every dlq command shares.
type dlqFlags struct {
	brokers listFlag
	topic   string
	timeout time.Duration
	asJSON  bool
}

func (f *dlqFlags) register(fs *flag.FlagSet, defaultTimeout time.Duration) {
	f.brokers = listFlag{"127.0.0.1:9092"}
	fs.Var(&f.brokers, "kafka-brokers", "comma-separated seed `brokers` (the default is where companyos dev listens)")
	fs.StringVar(&f.topic, "dlq-topic", events.TopicDLQ, "dead-letter topic")
	fs.DurationVar(&f.timeout, "timeout", defaultTimeout, "give up after this long")
	fs.BoolVar(&f.asJSON, "json", false, "machine-readable output")
}

func (f *dlqFlags) open() (*metering.DLQ, error) {
	return metering.NewDLQ(metering.DLQConfig{Brokers: f.brokers, Topic: f.topic})
}

// filterFlags select records for list and replay.
type filterFlags struct {
	sourceTopic string
	reason      string
	since       sinceFlag
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.sourceTopic, "source-topic", "", "only records from this source topic, e.g. metering.events.v1")
	fs.StringVar(&f.reason, "reason", "", "only records whose reason contains this text (case-insensitive)")
	fs.Var(&f.since, "since", "only records appended at or after `TIME`: RFC 3339, or a duration ago such as 24h")
}

func (f filterFlags) filter() metering.DLQFilter {
	return metering.DLQFilter{SourceTopic: f.sourceTopic, Reason: f.reason, Since: f.since.t}
}

// sinceFlag is an RFC 3339 time or a duration before now.
type sinceFlag struct{ t time.Time }

func (s *sinceFlag) String() string {
	if s.t.IsZero() {
		return ""
	}
	return s.t.Format(time.RFC3339)
}

func (s *sinceFlag) Set(v string) error {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		s.t = t
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want an RFC 3339 time or a positive duration, got %q", v)
	}
	s.t = time.Now().Add(-d)
	return nil
}

// parseDLQ parses flags; usageLine and about describe the command.
func parseDLQ(fs *flag.FlagSet, args []string, stderr io.Writer, usageLine, about string) (int, bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n\n%s\nFlags (each also COMPANYOS_<NAME>):\n", usageLine, about)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 2, false
	}
	return 0, true
}

func runDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos dlq list", flag.ContinueOnError)
	var common dlqFlags
	var filt filterFlags
	var limit int
	common.register(fs, time.Minute)
	filt.register(fs)
	fs.IntVar(&limit, "limit", 0, "print at most this many records (0 = all)")
	if code, ok := parseDLQ(fs, args, stderr, "companyos dlq list [--source-topic T] [--reason TEXT] [--since 24h] [--limit N] [--json]",
		"Lists dead-lettered records, oldest first per partition. With --json, one JSON object per line.\n"); !ok {
		return code
	}
	d, err := common.open()
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq list:", err)
		return 2
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(ctx, common.timeout)
	defer cancel()

	enc := json.NewEncoder(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	n := 0
	err = d.List(ctx, filt.filter(), limit, func(r metering.DLQRecord) error {
		n++
		if common.asJSON {
			return enc.Encode(r)
		}
		if n == 1 {
			fmt.Fprintln(tw, "POSITION\tTIME\tATTEMPT\tSOURCE\tKEY\tREPLAYED\tREASON")
		}
		_, err := fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Position(), r.Time.Format(time.RFC3339), r.Attempt,
			sourceString(r), shorten(printable(r.Key), 40), yesNo(r.Replayed), shorten(oneLine(r.Reason), 100))
		return err
	})
	if !common.asJSON {
		_ = tw.Flush()
	}
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq list:", err)
		return 1
	}
	if !common.asJSON {
		fmt.Fprintf(stderr, "%d record(s) in %s\n", n, d.Topic())
	}
	return 0
}

func runDLQShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos dlq show", flag.ContinueOnError)
	var common dlqFlags
	common.register(fs, 30*time.Second)
	// The position may come before or after the flags.
	var pos string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = args[0], args[1:]
	} else {
		fs.SetOutput(io.Discard)
		if err := fs.Parse(args); err == nil && fs.NArg() > 0 {
			pos = fs.Arg(0)
			args = append(args[:len(args)-fs.NArg()], fs.Args()[1:]...)
		}
	}
	if code, ok := parseDLQ(fs, args, stderr, "companyos dlq show <partition>:<offset> [--json]",
		"Prints one dead-lettered record: where it came from, its headers and its value (JSON pretty-printed).\n"); !ok {
		return code
	}
	part, off, err := parsePosition(pos)
	if err != nil {
		fmt.Fprintf(stderr, "companyos dlq show: %v\n", err)
		fs.Usage()
		return 2
	}
	d, err := common.open()
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq show:", err)
		return 2
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(ctx, common.timeout)
	defer cancel()
	r, err := d.Get(ctx, part, off)
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq show:", err)
		return 1
	}
	if common.asJSON {
		type header struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		}
		out := struct {
			metering.DLQRecord
			Headers []header        `json:"headers"`
			Value   json.RawMessage `json:"value,omitempty"`
			Raw     string          `json:"value_text,omitempty"`
		}{DLQRecord: r}
		for _, h := range r.Headers {
			out.Headers = append(out.Headers, header{h.Key, string(h.Value)})
		}
		if json.Valid(r.Value) {
			out.Value = r.Value
		} else {
			out.Raw = string(r.Value)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return 1
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "position\t%s %s\n", d.Topic(), r.Position())
	fmt.Fprintf(tw, "time\t%s\n", r.Time.Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "key\t%s\n", printable(r.Key))
	fmt.Fprintf(tw, "source\t%s\n", sourceString(r))
	fmt.Fprintf(tw, "attempt\t%d\n", r.Attempt)
	replayed := yesNo(r.Replayed)
	if m := r.ReplayedTo; m != nil {
		replayed = fmt.Sprintf("yes, to %s %d:%d (attempt %d) at %s", m.TargetTopic, m.TargetPartition, m.TargetOffset, m.Attempt, m.ReplayedAt.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "replayed\t%s\n", replayed)
	fmt.Fprintf(tw, "reason\t%s\n", oneLine(r.Reason))
	_ = tw.Flush()
	fmt.Fprintln(stdout, "\nheaders:")
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, h := range r.Headers {
		fmt.Fprintf(tw, "  %s\t%s\n", h.Key, printable(string(h.Value)))
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "\nvalue (%d bytes):\n", len(r.Value))
	var pretty bytes.Buffer
	switch {
	case json.Indent(&pretty, r.Value, "", "  ") == nil:
		fmt.Fprintln(stdout, pretty.String())
	case utf8.Valid(r.Value):
		fmt.Fprintln(stdout, string(r.Value))
	default:
		fmt.Fprint(stdout, hex.Dump(r.Value))
	}
	return 0
}

func runDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("companyos dlq replay", flag.ContinueOnError)
	var common dlqFlags
	var filt filterFlags
	var opts metering.ReplayOptions
	common.register(fs, 5*time.Minute)
	filt.register(fs)
	fs.BoolVar(&opts.DryRun, "dry-run", false, "show what would be re-driven; write nothing")
	fs.BoolVar(&opts.AllowProtected, "allow-protected", false, "also re-drive into "+events.TopicEvents+" (the append-only source of truth; normally a poisoned projection is fixed and rebuilt instead)")
	fs.IntVar(&opts.BatchSize, "batch-size", 100, "records re-driven per Kafka transaction")
	if code, ok := parseDLQ(fs, args, stderr, "companyos dlq replay [--source-topic T] [--reason TEXT] [--since 24h] [--dry-run] [--json]",
		`Re-produces every matching record to its source topic (from its headers): same key, the
source partition, DLQ headers removed, attempt + 1, dlq_replayed_from set. Each batch
is committed in one Kafka transaction together with a marker on
companyos.dlq.replayed.v1, so running replay again never re-drives a record twice.
`); !ok {
		return code
	}
	if opts.BatchSize < 1 {
		fmt.Fprintln(stderr, "companyos dlq replay: --batch-size must be at least 1")
		return 2
	}
	opts.Filter = filt.filter()
	opts.Progress = func(done, total int) { fmt.Fprintf(stderr, "replay: %d/%d re-driven\n", done, total) }
	d, err := common.open()
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq replay:", err)
		return 2
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(ctx, common.timeout)
	defer cancel()
	sum, err := d.Replay(ctx, opts)
	if common.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(sum)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, it := range sum.Items {
			if it.Outcome == metering.OutcomeAlreadyReplayed {
				continue
			}
			target := "-"
			if it.TargetPartition >= 0 {
				target = fmt.Sprintf("%s %d", it.TargetTopic, it.TargetPartition)
				if it.TargetOffset >= 0 {
					target += ":" + strconv.FormatInt(it.TargetOffset, 10)
				}
			}
			fmt.Fprintf(tw, "%d:%d\t%s\t%s\t%s\n", it.DLQPartition, it.DLQOffset, it.Outcome, target, it.Detail)
		}
		_ = tw.Flush()
		verb := "replayed"
		n := sum.Replayed
		if sum.DryRun {
			verb, n = "would replay", sum.WouldReplay
		}
		fmt.Fprintf(stdout, "matched %d: %s %d, already replayed %d, skipped %d\n", sum.Matched, verb, n, sum.AlreadyReplayed, sum.Skipped)
	}
	if err != nil {
		fmt.Fprintln(stderr, "companyos dlq replay:", err)
		return 1
	}
	return 0
}

// parsePosition parses "<partition>:<offset>".
func parsePosition(s string) (int32, int64, error) {
	p, o, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("want <partition>:<offset> (as printed by dlq list), got %q", s)
	}
	part, err1 := strconv.ParseInt(p, 10, 32)
	off, err2 := strconv.ParseInt(o, 10, 64)
	if err1 != nil || err2 != nil || part < 0 || off < 0 {
		return 0, 0, fmt.Errorf("want <partition>:<offset> with non-negative integers, got %q", s)
	}
	return int32(part), off, nil
}

func sourceString(r metering.DLQRecord) string {
	if r.SourceTopic == "" {
		return "?"
	}
	if r.SourcePartition < 0 {
		return r.SourceTopic
	}
	return fmt.Sprintf("%s %d:%d", r.SourceTopic, r.SourcePartition, r.SourceOffset)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// printable quotes s when it would garble a terminal line.
func printable(s string) string {
	if s == "" {
		return "-"
	}
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s && !strings.ContainsAny(s, " \t") {
		return s
	}
	return q
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func shorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
