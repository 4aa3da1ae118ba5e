package loadgen

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram is a lock-free, HDR-style log-linear latency histogram in
// microseconds: values below 128µs are exact, larger ones fall in buckets
// whose width is under 1/128 (0.8%) of their value. It covers up to ~2^40µs
// (12 days) in ~4,700 counters, so recording is one atomic add and reading a
// quantile never needs the samples.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sumUS  atomic.Uint64
	maxUS  atomic.Uint64
}

const (
	subBits    = 7
	subCount   = 1 << subBits // 128 linear sub-buckets per power of two
	maxShift   = 33           // values up to 2^(subBits+1+maxShift) µs
	numBuckets = subCount + (maxShift+1)*subCount
)

func bucketOf(us uint64) int {
	if us < subCount {
		return int(us)
	}
	shift := bits.Len64(us) - (subBits + 1) // us>>shift is in [128, 255]
	if shift > maxShift {
		return numBuckets - 1
	}
	return subCount + shift*subCount + int(us>>uint(shift)) - subCount
}

// bucketHigh is the largest value that lands in bucket i.
func bucketHigh(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	shift := uint((i - subCount) / subCount)
	m := uint64(subCount + (i-subCount)%subCount)
	return (m+1)<<shift - 1
}

// Record adds one latency. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.counts[bucketOf(us)].Add(1)
	h.total.Add(1)
	h.sumUS.Add(us)
	for {
		cur := h.maxUS.Load()
		if us <= cur || h.maxUS.CompareAndSwap(cur, us) {
			return
		}
	}
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max is the largest recorded value (exact).
func (h *Histogram) Max() time.Duration { return time.Duration(h.maxUS.Load()) * time.Microsecond }

// Mean is the average recorded value.
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sumUS.Load()/n) * time.Microsecond
}

// Quantile returns the value at quantile q (0..1): the highest value of the
// bucket holding the ⌈q·n⌉-th smallest sample, capped at the exact maximum,
// so it never under-reports by more than the bucket width.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := bucketHigh(i)
			if m := h.maxUS.Load(); v > m {
				v = m
			}
			return time.Duration(v) * time.Microsecond
		}
	}
	return h.Max()
}
