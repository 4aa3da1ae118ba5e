package httpx

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the request metrics every API shares. Labels are the route
// pattern (not the path) and the status class, so cardinality stays fixed.
type Metrics struct {
	total    *prometheus.CounterVec
	fivexx   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers http_total, http_5xx_total and
// http_request_duration_seconds on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_total", Help: "HTTP requests by route and status class.",
		}, []string{"route", "code"}),
		fivexx: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_5xx_total", Help: "HTTP requests answered with a 5xx status, by route.",
		}, []string{"route"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
	}
	reg.MustRegister(m.total, m.fivexx, m.duration)
	return m
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Instrument wraps h, labelling its metrics with route (a ServeMux pattern).
func (m *Metrics) Instrument(route string, h http.Handler) http.Handler {
	total := map[int]prometheus.Counter{}
	for c := 1; c <= 5; c++ {
		total[c] = m.total.WithLabelValues(route, strconv.Itoa(c)+"xx")
	}
	fivexx := m.fivexx.WithLabelValues(route)
	dur := m.duration.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		class := rec.status / 100
		if c, ok := total[class]; ok {
			c.Inc()
		}
		if class == 5 {
			fivexx.Inc()
		}
		dur.Observe(time.Since(start).Seconds())
	})
}
