package graphload

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes the summary as a human-readable report.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "graph load: tenant %s at %s, %g qps for %s, %d queries (seed %d), concurrency %d\n",
		s.Tenant, s.URL, s.TargetQPS, time.Duration(s.DurationS*float64(time.Second)), s.Queries, s.Seed, s.Concurrency)
	fmt.Fprintf(&b, "sent %d of %d scheduled (%.1f/s); %d completed in %.1fs: %.1f qps achieved; ok %d, errors %d (%.2f%%)\n",
		s.Sent, s.Scheduled, s.SentQPS, s.Completed, s.ElapsedS, s.AchievedQPS, s.OK, s.Errors, 100*s.ErrorRate)
	fmt.Fprintf(&b, "status: %s\n", counts(s.Status))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "client latency ms (from scheduled send)\t%7s\t%7s\t%8s\t%8s\t%8s\t%8s\t%8s\t%10s\n", "count", "ok", "p50", "p90", "p95", "p99", "max", "mean bytes")
	row := func(name string, l LatencyMS, ok, bytes string) {
		fmt.Fprintf(tw, "  %s\t%7d\t%7s\t%8.1f\t%8.1f\t%8.1f\t%8.1f\t%8.1f\t%10s\n", name, l.Count, ok, l.P50, l.P90, l.P95, l.P99, l.Max, bytes)
	}
	row("all", s.LatencyMS, fmt.Sprint(s.OK), "")
	for _, form := range slices.Sorted(maps.Keys(s.Forms)) {
		f := s.Forms[form]
		row(form, f.LatencyMS, fmt.Sprint(f.OK), fmt.Sprintf("%.0f", f.MeanBytes))
	}
	row("service time (from actual send)", s.ServiceMS, "", "")
	row("send lag", s.SendLagMS, "", "")
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, form := range slices.Sorted(maps.Keys(s.Forms)) {
		if f := s.Forms[form]; f.Errors > 0 {
			fmt.Fprintf(&b, "  %s status: %s\n", form, counts(f.Status))
		}
	}
	fmt.Fprintf(&b, "client CPU %.0f%% of one core", s.ClientCPUPct)
	if s.MachineBusyPct > 0 {
		fmt.Fprintf(&b, "; machine busy %.0f%% (all cores)", s.MachineBusyPct)
	}
	b.WriteString("\n")
	switch {
	case s.Server.Error != "":
		fmt.Fprintf(&b, "server histogram: unavailable (%s)\n", s.Server.Error)
	case s.Server.Ops != nil:
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "server graph_query_ms (bucket estimate)\t%7s\t%8s\t%8s\t%8s\t%8s\t%12s\n", "count", "mean", "p50", "p95", "p99", "> max bucket")
		for _, op := range slices.Sorted(maps.Keys(s.Server.Ops)) {
			o := s.Server.Ops[op]
			fmt.Fprintf(tw, "  %s\t%7.0f\t%8.2f\t%8.2f\t%8.2f\t%8.2f\t%12.0f\n", op, o.Count, o.MeanMS, o.P50MS, o.P95MS, o.P99MS, o.OverMaxBucket)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(&b, "server CPU %.0f%% of one core, RSS %.0f MiB\n", s.Server.CPUPct, s.Server.RSSBytes/(1<<20))
	}
	if len(s.FirstErrors) > 0 {
		b.WriteString("first errors:\n")
		for _, e := range s.FirstErrors {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
