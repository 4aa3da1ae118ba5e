package ledger

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/companyos/companyos/internal/keyfile"
)

func keySetOf(e *env) keyfile.KeySet {
	return keyfile.KeySet{Keys: []keyfile.PublicKey{e.signer.Public()}}
}

func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	return -1
}
