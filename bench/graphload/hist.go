package graphload

import (
	"math/bits"
	"time"
)

// latencyHist is a log-linear latency histogram in microseconds: values
// below 64µs are exact, larger ones fall in buckets narrower than 1/64
// (1.6%) of their value. Quantiles are read without keeping samples, so a
// long run costs no more memory than a short one. Not safe for concurrent
// use; the caller locks.
type latencyHist struct {
	counts [histBuckets]uint64
	n      uint64
	sumUS  uint64
	maxUS  uint64
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	histShifts  = 36 // up to ~2^43µs, about 100 days
	histBuckets = histSub + histShifts*histSub
)

func histBucket(us uint64) int {
	if us < histSub {
		return int(us)
	}
	shift := bits.Len64(us) - (histSubBits + 1) // us>>shift is in [64, 127]
	if shift >= histShifts {
		return histBuckets - 1
	}
	return histSub + shift*histSub + int(us>>uint(shift)) - histSub
}

// histHigh is the largest value that lands in bucket i.
func histHigh(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := (i - histSub) / histSub
	sub := uint64((i-histSub)%histSub + histSub)
	return (sub+1)<<uint(shift) - 1
}

func (h *latencyHist) record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	h.counts[histBucket(us)]++
	h.n++
	h.sumUS += us
	h.maxUS = max(h.maxUS, us)
}

func (h *latencyHist) merge(o *latencyHist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sumUS += o.sumUS
	h.maxUS = max(h.maxUS, o.maxUS)
}

// quantile is the upper bound of the bucket holding the q-quantile, capped
// at the maximum seen: it never under-reports.
func (h *latencyHist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return time.Duration(min(histHigh(i), h.maxUS)) * time.Microsecond
		}
	}
	return time.Duration(h.maxUS) * time.Microsecond
}

// LatencyMS is a latency distribution in milliseconds.
type LatencyMS struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func (h *latencyHist) summary() LatencyMS {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	s := LatencyMS{Count: h.n, P50: ms(h.quantile(.50)), P90: ms(h.quantile(.90)), P95: ms(h.quantile(.95)),
		P99: ms(h.quantile(.99)), Max: float64(h.maxUS) / 1000}
	if h.n > 0 {
		s.Mean = float64(h.sumUS) / float64(h.n) / 1000
	}
	return s
}
