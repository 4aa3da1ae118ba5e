package graphload

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Buckets is one series of a Prometheus histogram: cumulative counts by
// upper bound (le), plus _sum and _count.
type Buckets struct {
	// Le maps an upper bound to the cumulative count of observations <= it;
	// +Inf is math.Inf(1).
	Le    map[float64]float64
	Sum   float64
	Count float64
}

// ParseHistogram reads the Prometheus text exposition format and returns
// the series of the histogram family name, one Buckets per value of the
// label byLabel (series without that label are keyed ""). Other families
// are skipped.
func ParseHistogram(r io.Reader, name, byLabel string) (map[string]*Buckets, error) {
	out := map[string]*Buckets{}
	get := func(key string) *Buckets {
		b := out[key]
		if b == nil {
			b = &Buckets{Le: map[float64]float64{}}
			out[key] = b
		}
		return b
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name+"_") {
			continue
		}
		metric, labels, value, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", n, err)
		}
		switch metric {
		case name + "_bucket":
			le, ok := labels["le"]
			if !ok {
				return nil, fmt.Errorf("metrics line %d: bucket without le", n)
			}
			bound, err := parseFloat(le)
			if err != nil {
				return nil, fmt.Errorf("metrics line %d: le %q: %w", n, le, err)
			}
			get(labels[byLabel]).Le[bound] = value
		case name + "_sum":
			get(labels[byLabel]).Sum = value
		case name + "_count":
			get(labels[byLabel]).Count = value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return out, nil
}

// parseSample splits `metric{a="x",b="y"} value [timestamp]`.
func parseSample(line string) (metric string, labels map[string]string, value float64, err error) {
	labels = map[string]string{}
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return "", nil, 0, fmt.Errorf("no value in %q", line)
	}
	metric, rest := line[:i], line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " \t,")
			if rest == "" {
				return "", nil, 0, fmt.Errorf("unterminated labels in %q", line)
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
				return "", nil, 0, fmt.Errorf("bad label in %q", line)
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				if c == '"' {
					rest, closed = rest[j+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return "", nil, 0, fmt.Errorf("unterminated label value in %q", line)
			}
			labels[key] = val.String()
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, fmt.Errorf("no value in %q", line)
	}
	value, err = parseFloat(fields[0])
	return metric, labels, value, err
}

func parseFloat(s string) (float64, error) {
	switch s {
	case "+Inf", "Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	}
	return strconv.ParseFloat(s, 64)
}

// Diff returns after − before per bucket: the observations made between
// two scrapes. A series whose count went down was reset (server restart) in
// between; its after values are then taken as the diff.
func Diff(before, after map[string]*Buckets) map[string]*Buckets {
	out := map[string]*Buckets{}
	for key, a := range after {
		b := before[key]
		if b == nil || a.Count < b.Count {
			b = &Buckets{}
		}
		d := &Buckets{Le: map[float64]float64{}, Sum: a.Sum - b.Sum, Count: a.Count - b.Count}
		for le, c := range a.Le {
			d.Le[le] = c - b.Le[le]
		}
		if d.Count > 0 {
			out[key] = d
		}
	}
	return out
}

// Quantile estimates the q-quantile (0 < q < 1) the way PromQL's
// histogram_quantile does: find the bucket holding rank q·count and
// interpolate linearly inside it, the first bucket starting at 0. A rank in
// the +Inf bucket returns the largest finite bound (the estimate is then a
// lower bound). NaN when there are no observations.
func (b *Buckets) Quantile(q float64) float64 {
	bounds := make([]float64, 0, len(b.Le))
	for le := range b.Le {
		bounds = append(bounds, le)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 {
		return math.NaN()
	}
	total := b.Le[bounds[len(bounds)-1]]
	if !math.IsInf(bounds[len(bounds)-1], 1) {
		total = math.Max(total, b.Count)
	}
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, le := range bounds {
		c := b.Le[le]
		if c >= rank && c > prevCount {
			if math.IsInf(le, 1) {
				return prevBound
			}
			lo := prevBound
			if le <= 0 {
				lo = le
			}
			return lo + (le-lo)*(rank-prevCount)/(c-prevCount)
		}
		prevBound, prevCount = le, c
	}
	return prevBound
}
