// Package httpx owns what every CompanyOS HTTP API shares: RFC 9457 problem
// details, JSON responses, and the request metrics middleware. It must not
// know any route's business logic.
package httpx

import (
	"encoding/json"
	"net/http"
)

// ProblemBase prefixes every problem type URI.
const ProblemBase = "https://companyos.dev/problems/"

// FieldError is one invalid field; Field is a JSON path such as
// "payload.attrs.region".
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Problem is an RFC 9457 problem detail, with CompanyOS extension members.
type Problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail,omitempty"`
	Instance string       `json:"instance,omitempty"`
	Errors   []FieldError `json:"errors,omitempty"`
	// Extensions.
	CommandID   string          `json:"command_id,omitempty"`
	ReceiptID   string          `json:"receipt_id,omitempty"`
	Seq         uint64          `json:"seq,omitempty"`
	Consistency string          `json:"consistency,omitempty"`
	Rationale   json.RawMessage `json:"rationale,omitempty"`
	Obligations json.RawMessage `json:"obligations,omitempty"`
	CurrentVer  *uint64         `json:"current_version,omitempty"`
}

// NewProblem builds a problem of the given kind ("validation", "not-found"…).
func NewProblem(status int, kind, detail string) *Problem {
	return &Problem{Type: ProblemBase + kind, Title: http.StatusText(status), Status: status, Detail: detail}
}

// WriteProblem writes p as application/problem+json.
func WriteProblem(w http.ResponseWriter, p *Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// WriteJSON writes v as application/json with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
