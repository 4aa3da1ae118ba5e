package metering_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/companyos/companyos/metering"
)

func benchEvent(i int) []byte {
	return []byte(fmt.Sprintf(`{"specversion":"1.0","id":"run-%d","source":"//meterload/agent-%d","type":"compute.cpu_seconds","subject":"bench-%d","time":"2026-11-28T12:00:00.123456789Z","data":{"quantity":"%d.25","unit":"second","tags":{"service":"svc-%d","region":"eu-west-1"}}}`, i, i%64, i%8, i%1000, i%16))
}

// BenchmarkDecodeEvent is the per-event cost of validation and
// normalisation at ingest.
func BenchmarkDecodeEvent(b *testing.B) {
	raw := benchEvent(42)
	v := metering.Validator{Now: func() time.Time { return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) }}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeRecord is the per-event cost of the Kafka record.
func BenchmarkEncodeRecord(b *testing.B) {
	e, err := metering.DecodeEvent(benchEvent(42))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = metering.Record(e)
	}
}
