package evidence

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus series. None has a tenant or hash label.
type metrics struct {
	blobsWritten   prometheus.Counter
	bytesRaw       prometheus.Counter
	compactionRuns *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		blobsWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "evidence_blobs_written_total",
			Help: "Evidence blobs newly stored by Put and PutTx (already stored blobs are not counted).",
		}),
		bytesRaw: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "evidence_bytes_raw_total",
			Help: "Uncompressed bytes of the evidence blobs counted by evidence_blobs_written_total.",
		}),
		compactionRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evidence_compaction_runs_total",
			Help: "Evidence compaction runs, by result (ok or error).",
		}, []string{"result"}),
	}
	// Both results exist from the start, so rate() and absent() work before
	// the first failure.
	m.compactionRuns.WithLabelValues("ok")
	m.compactionRuns.WithLabelValues("error")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.blobsWritten, m.bytesRaw, m.compactionRuns} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("evidence: register metrics: %w", err)
		}
	}
	return m, nil
}
