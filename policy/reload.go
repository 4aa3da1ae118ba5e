package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reloadable is the engine every component holds: the current bundle,
// swapped atomically when a new bundle is published (hot reload, no
// restart), with a decision cache in front of it.
//
// The cache key is the bundle version plus Engine.DecisionKey — exactly the
// input values the policy reads — so an attribute change is a different key
// (nothing stale can be served) and a bundle change empties the cache.
type Reloadable struct {
	cur atomic.Pointer[Engine]

	mu    sync.RWMutex
	cache map[string]Decision
	limit int

	decisions *prometheus.CounterVec
	latency   prometheus.Histogram
	cacheOps  *prometheus.CounterVec
	reloads   prometheus.Counter
	version   *prometheus.GaugeVec
}

// ReloadableConfig configures a Reloadable.
type ReloadableConfig struct {
	// CacheSize bounds the decision cache (optional, default 100000; a
	// negative value disables caching). When full it is emptied.
	CacheSize int
	// Registerer for the policy metrics (optional).
	Registerer prometheus.Registerer
}

// NewReloadable starts with e.
func NewReloadable(e *Engine, cfg ReloadableConfig) *Reloadable {
	if cfg.CacheSize == 0 {
		cfg.CacheSize = 100_000
	}
	r := &Reloadable{
		cache: map[string]Decision{},
		limit: cfg.CacheSize,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "policy_decisions_total",
			Help: "Policy decisions by result (allow, deny)."}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "policy_eval_seconds",
			Help: "Policy evaluation latency (cache misses only).", Buckets: prometheus.ExponentialBuckets(20e-6, 2, 14)}),
		cacheOps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "policy_decision_cache_total",
			Help: "Decision cache lookups by outcome (hit, miss, uncacheable); hit ratio = hit / (hit + miss)."}, []string{"outcome"}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Name: "policy_bundle_reloads_total",
			Help: "Policy bundles hot-reloaded."}),
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "policy_bundle_info",
			Help: "The active policy bundle (value 1), by version."}, []string{"version"}),
	}
	for _, l := range []string{"allow", "deny"} {
		r.decisions.WithLabelValues(l)
	}
	for _, l := range []string{"hit", "miss", "uncacheable"} {
		r.cacheOps.WithLabelValues(l)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(r.decisions, r.latency, r.cacheOps, r.reloads, r.version)
	}
	r.cur.Store(e)
	r.version.WithLabelValues(e.Version()).Set(1)
	return r
}

// Engine is the current engine.
func (r *Reloadable) Engine() *Engine { return r.cur.Load() }

// Swap makes e the current engine and empties the decision cache. It
// returns the previous engine.
func (r *Reloadable) Swap(e *Engine) *Engine {
	old := r.cur.Swap(e)
	r.mu.Lock()
	clear(r.cache)
	r.mu.Unlock()
	r.reloads.Inc()
	r.version.Reset()
	r.version.WithLabelValues(e.Version()).Set(1)
	return old
}

// Version of the current bundle.
func (r *Reloadable) Version() string { return r.cur.Load().Version() }

// Hash of the current bundle.
func (r *Reloadable) Hash() string { return r.cur.Load().Hash() }

// StepUp of the current bundle.
func (r *Reloadable) StepUp() ([]string, time.Duration) { return r.cur.Load().StepUp() }

// DecisionKey is the current engine's key, prefixed with its version.
func (r *Reloadable) DecisionKey(in Input) (string, bool) {
	e := r.cur.Load()
	k, ok := e.DecisionKey(in)
	if !ok {
		return "", false
	}
	return e.Version() + "\x00" + k, true
}

// Decide evaluates in with the current bundle, from the cache when the same
// values were decided before. Fail-closed decisions (timeouts, errors) are
// never cached.
func (r *Reloadable) Decide(ctx context.Context, in Input) Decision {
	e := r.cur.Load()
	var key string
	if r.limit > 0 {
		if k, ok := e.DecisionKey(in); ok {
			key = e.Version() + "\x00" + k
			r.mu.RLock()
			d, hit := r.cache[key]
			r.mu.RUnlock()
			if hit {
				r.cacheOps.WithLabelValues("hit").Inc()
				r.count(d)
				return d
			}
			r.cacheOps.WithLabelValues("miss").Inc()
		} else {
			r.cacheOps.WithLabelValues("uncacheable").Inc()
		}
	}
	start := time.Now()
	d := e.Decide(ctx, in)
	r.latency.Observe(time.Since(start).Seconds())
	r.count(d)
	if key != "" && !failedClosed(d) && r.cur.Load() == e {
		r.mu.Lock()
		if len(r.cache) >= r.limit {
			clear(r.cache)
		}
		r.cache[key] = d
		r.mu.Unlock()
	}
	return d
}

func (r *Reloadable) count(d Decision) {
	if d.Allow {
		r.decisions.WithLabelValues("allow").Inc()
	} else {
		r.decisions.WithLabelValues("deny").Inc()
	}
}

func failedClosed(d Decision) bool {
	for _, reason := range d.Rationale {
		if reason.Rule == FailClosedRule {
			return true
		}
	}
	return false
}
