package cogs

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of cogs_metering_events_total.
const (
	ResultAccepted  = "accepted"  // projected (a replayed event counts again)
	ResultDuplicate = "duplicate" // another occurrence of its (tenant, source, id) was projected
	ResultDLQ       = "dlq"       // sent to companyos.dlq.v1
)

type metrics struct {
	events       *prometheus.CounterVec // cogs_metering_events_total{result}
	dlq          prometheus.Counter     // metering_dlq_total
	unattributed *prometheus.CounterVec // cogs_unattributed_events_total{kind}
	prices       prometheus.Counter
	pricesDLQ    prometheus.Counter
	flushSecs    prometheus.Histogram
	stepSecs     *prometheus.HistogramVec
	flushErrors  prometheus.Counter
	keyIndex     prometheus.Gauge
	keysLookedUp prometheus.Counter
	anomalies    *prometheus.GaugeVec
	anomalyRuns  *prometheus.CounterVec
	anomalyLast  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		// Not metering_events_total: the ingest API (package metering) owns
		// that name for events received, and the seed's "ingest/sec" panel
		// sums it; counting projection into it would count every event twice.
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cogs_metering_events_total",
			Help: "Metering events handled by the cogs projector, by result (accepted, duplicate, dlq)."}, []string{"result"}),
		dlq: prometheus.NewCounter(prometheus.CounterOpts{Name: "metering_dlq_total",
			Help: "Metering events sent to companyos.dlq.v1."}),
		unattributed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cogs_unattributed_events_total",
			Help: "Projected metering events whose tenant or service could not be attributed, by kind (tenant, service)."}, []string{"kind"}),
		prices: prometheus.NewCounter(prometheus.CounterOpts{Name: "cogs_prices_total",
			Help: "pricing.set receipts projected into the price catalog."}),
		pricesDLQ: prometheus.NewCounter(prometheus.CounterOpts{Name: "cogs_prices_dlq_total",
			Help: "companyos.events.v1 records the cogs projector sent to companyos.dlq.v1."}),
		flushSecs: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cogs_flush_seconds",
			Help:    "Time to write one batch (events, hourly usage, prices, positions) to ClickHouse.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		stepSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cogs_flush_step_seconds",
			Help:    "Time of each step of a successful flush: lookup (event keys), events, buckets_read, buckets_write, prices, positions.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"step"}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "cogs_flush_errors_total",
			Help: "Failed flush attempts (each is retried; nothing is acknowledged as stored until one succeeds)."}),
		keyIndex: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cogs_key_index_fingerprints",
			Help: "Fingerprints of stored events the projector holds in memory to skip ClickHouse look-ups of new events."}),
		keysLookedUp: prometheus.NewCounter(prometheus.CounterOpts{Name: "cogs_key_lookups_total",
			Help: "Event keys looked up in ClickHouse because their fingerprint was held (duplicates, replays, fingerprint collisions)."}),
		anomalies: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cogs_anomalies",
			Help: "Days within the lookback window whose cost lies outside ±3σ of the tenant's 14-day baseline (anomalies_day.sql)."}, []string{"tenant", "direction"}),
		anomalyRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cogs_anomaly_checks_total",
			Help: "Runs of anomalies_day.sql by result (ok, error)."}, []string{"result"}),
		anomalyLast: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cogs_anomaly_check_timestamp_seconds",
			Help: "Unix time of the last successful anomalies_day.sql run."}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	m.events = register(reg, m.events, &errs)
	m.dlq = register(reg, m.dlq, &errs)
	m.unattributed = register(reg, m.unattributed, &errs)
	m.prices = register(reg, m.prices, &errs)
	m.pricesDLQ = register(reg, m.pricesDLQ, &errs)
	m.flushSecs = register(reg, m.flushSecs, &errs)
	m.stepSecs = register(reg, m.stepSecs, &errs)
	m.flushErrors = register(reg, m.flushErrors, &errs)
	m.keyIndex = register(reg, m.keyIndex, &errs)
	m.keysLookedUp = register(reg, m.keysLookedUp, &errs)
	m.anomalies = register(reg, m.anomalies, &errs)
	m.anomalyRuns = register(reg, m.anomalyRuns, &errs)
	m.anomalyLast = register(reg, m.anomalyLast, &errs)
	return m, errors.Join(errs...)
}

// register registers c, or returns the identical collector already
// registered (a second projector in one process, or another component
// counting metering_dlq_total).
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errs *[]error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	*errs = append(*errs, fmt.Errorf("cogs: metrics: %w", err))
	return c
}
