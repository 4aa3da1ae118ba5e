// Package metering owns usage ingest: the CloudEvents 1.0 metering event,
// its validation, the HTTP ingest API (POST /v1/metering/events) that
// produces accepted events to metering.events.v1, and the dead-letter
// tooling shared by the metering path.
//
// It must not write ClickHouse (projections/cogs does) nor decide commands.
package metering

import "time"

// Event is one metering event as stored on metering.events.v1: the record
// key is Subject (the tenant), the value is this struct as JSON (CloudEvents
// structured mode). Quantity is normalised at ingest to a plain decimal
// string ("12.5", never a float or exponent form), so every reader sums the
// same exact value.
type Event struct {
	SpecVersion     string    `json:"specversion"` // "1.0"
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`    // the meter, e.g. "compute.cpu_seconds"
	Subject         string    `json:"subject"` // the tenant
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype,omitempty"`
	Data            Data      `json:"data"`
}

// Data is the metering payload.
type Data struct {
	Quantity string            `json:"quantity"` // exact decimal string
	Unit     string            `json:"unit"`
	Tags     map[string]string `json:"tags,omitempty"` // raw tags as sent (service, region, team, …)
}

// Key is the idempotency key of an event: (source, id).
func (e Event) Key() string { return e.Source + "\x00" + e.ID }
