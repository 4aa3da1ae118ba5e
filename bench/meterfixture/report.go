package meterfixture

import (
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/companyos/companyos/projections/cogs"
)

// ReadExpected reads an expected.json written by WriteFiles.
func ReadExpected(path string) (Expected, error) {
	var e Expected
	b, err := os.ReadFile(path)
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// Report compares ClickHouse's cost_per_tenant_day.sql and
// anomalies_day.sql with an Expected.
type Report struct {
	TenantDays    int    `json:"tenant_days"`    // expected ∪ actual
	Mismatched    int    `json:"mismatched"`     // tenant-days whose cost differs
	ExpectedTotal string `json:"expected_total"` // exact
	ActualTotal   string `json:"actual_total"`
	AbsError      string `json:"abs_error"` // Σ |actual − expected| over tenant-days, exact
	// AttributionErrorPct is AbsError / ExpectedTotal × 100: how much cost
	// landed on the wrong tenant-day (or nowhere, or twice).
	AttributionErrorPct float64    `json:"attribution_error_pct"`
	Mismatches          []Mismatch `json:"mismatches,omitempty"` // the first 20

	Anomalies AnomalyReport `json:"anomalies"`
	OK        bool          `json:"ok"` // exact costs, every injected anomaly found and nothing else
}

// Mismatch is one tenant-day whose cost differs.
type Mismatch struct {
	Tenant   string `json:"tenant"`
	Day      string `json:"day"`
	Expected string `json:"expected"`
	Actual   string `json:"actual"`
}

// AnomalyReport says which injected anomalies anomalies_day.sql found.
type AnomalyReport struct {
	Injected   []Anomaly `json:"injected"`
	Found      []Anomaly `json:"found"`
	Missed     []Anomaly `json:"missed"`
	Unexpected []Anomaly `json:"unexpected"` // reported but not injected
	// NotYetJudged are injected anomalies on days anomalies_day.sql does
	// not judge yet (today or later in UTC).
	NotYetJudged []Anomaly `json:"not_yet_judged,omitempty"`
}

// Compare builds the report.
func Compare(exp Expected, actual []cogs.TenantDayCost, found []cogs.Anomaly) Report {
	var r Report
	want := map[string]*big.Rat{}
	expTotal, actTotal, absErr := new(big.Rat), new(big.Rat), new(big.Rat)
	for _, c := range exp.Costs {
		v, ok := new(big.Rat).SetString(c.Cost)
		if !ok {
			v = new(big.Rat)
		}
		want[c.Tenant+" "+c.Day] = v
		expTotal.Add(expTotal, v)
	}
	got := map[string]*big.Rat{}
	for _, a := range actual {
		k := a.Tenant + " " + a.Day.Format("2006-01-02")
		if got[k] == nil {
			got[k] = new(big.Rat)
		}
		got[k].Add(got[k], a.Cost.Rat())
		actTotal.Add(actTotal, a.Cost.Rat())
	}
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		w, g := want[k], got[k]
		if w == nil {
			w = new(big.Rat)
		}
		if g == nil {
			g = new(big.Rat)
		}
		if w.Cmp(g) == 0 {
			continue
		}
		r.Mismatched++
		absErr.Add(absErr, new(big.Rat).Abs(new(big.Rat).Sub(g, w)))
		if len(r.Mismatches) < 20 {
			tenant, day, _ := strings.Cut(k, " ")
			r.Mismatches = append(r.Mismatches, Mismatch{Tenant: tenant, Day: day, Expected: cogs.RatString(w), Actual: cogs.RatString(g)})
		}
	}
	r.TenantDays = len(keys)
	r.ExpectedTotal, r.ActualTotal, r.AbsError = cogs.RatString(expTotal), cogs.RatString(actTotal), cogs.RatString(absErr)
	if expTotal.Sign() != 0 {
		r.AttributionErrorPct, _ = new(big.Rat).Mul(new(big.Rat).Quo(absErr, expTotal), big.NewRat(100, 1)).Float64()
	} else if absErr.Sign() != 0 {
		r.AttributionErrorPct = 100
	}

	today := time.Now().UTC().Format("2006-01-02")
	injected := map[string]Anomaly{}
	r.Anomalies.Injected = exp.Anomalies
	for _, a := range exp.Anomalies {
		injected[a.Tenant+" "+a.Day] = a
	}
	seen := map[string]bool{}
	for _, a := range found {
		k := a.Tenant + " " + a.At.Format("2006-01-02")
		seen[k] = true
		if inj, ok := injected[k]; ok && inj.Direction == a.Direction {
			r.Anomalies.Found = append(r.Anomalies.Found, inj)
		} else {
			r.Anomalies.Unexpected = append(r.Anomalies.Unexpected, Anomaly{Tenant: a.Tenant, Day: a.At.Format("2006-01-02"),
				Direction: a.Direction, Factor: fmt.Sprintf("z=%.1f", a.ZScore)})
		}
	}
	for _, a := range exp.Anomalies {
		switch {
		case seen[a.Tenant+" "+a.Day]:
		case a.Day >= today:
			r.Anomalies.NotYetJudged = append(r.Anomalies.NotYetJudged, a)
		default:
			r.Anomalies.Missed = append(r.Anomalies.Missed, a)
		}
	}
	r.OK = r.Mismatched == 0 && len(r.Anomalies.Missed) == 0 && len(r.Anomalies.Unexpected) == 0
	return r
}

// WriteText prints the report for people.
func (r Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "tenant-days compared: %d, mismatched: %d\n", r.TenantDays, r.Mismatched)
	fmt.Fprintf(w, "total cost: expected %s, ClickHouse %s\n", r.ExpectedTotal, r.ActualTotal)
	fmt.Fprintf(w, "attribution error: %.2f%% (Σ|actual − expected| = %s)\n", r.AttributionErrorPct, r.AbsError)
	for _, m := range r.Mismatches {
		fmt.Fprintf(w, "  %s %s: expected %s, ClickHouse %s\n", m.Tenant, m.Day, m.Expected, m.Actual)
	}
	a := r.Anomalies
	fmt.Fprintf(w, "injected anomalies found by anomalies_day.sql: %d of %d\n", len(a.Found), len(a.Injected))
	for _, x := range a.Found {
		fmt.Fprintf(w, "  found      %s %s %s ×%s\n", x.Tenant, x.Day, x.Direction, x.Factor)
	}
	for _, x := range a.Missed {
		fmt.Fprintf(w, "  MISSED     %s %s %s ×%s\n", x.Tenant, x.Day, x.Direction, x.Factor)
	}
	for _, x := range a.NotYetJudged {
		fmt.Fprintf(w, "  not judged %s %s %s ×%s (the day is not over in UTC)\n", x.Tenant, x.Day, x.Direction, x.Factor)
	}
	for _, x := range a.Unexpected {
		fmt.Fprintf(w, "  UNEXPECTED %s %s %s (%s)\n", x.Tenant, x.Day, x.Direction, x.Factor)
	}
	if r.OK {
		fmt.Fprintln(w, "result: OK")
	} else {
		fmt.Fprintln(w, "result: MISMATCH")
	}
}
