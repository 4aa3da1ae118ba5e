package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/companyos/companyos/events"
)

// Parsing receipts.jsonl is most of the verifier's work besides Ed25519, so
// the two shapes it parses a million times — the line and the receipt
// payload — have a fast path for the exact bytes CompanyOS writes (fixed key
// order, no whitespace, plain ASCII strings in the fields read). Anything
// else, including every malformed input, falls back to encoding/json, which
// is the reference: the fast path accepts only inputs for which
// encoding/json yields the same values (the differential fuzz test checks
// it), so an attacker gains nothing by choosing one path or the other.

// parsedLine is one receipts.jsonl line. Slices point into the line or into
// the caller's arena.
type parsedLine struct {
	seq         int64
	id          []byte
	payloadType []byte
	payload     []byte
	sigs        []parsedSig
	disclosures []events.Disclosure
}

type parsedSig struct {
	keyID []byte
	sig   []byte
}

// slimReceipt holds the payload fields the verifier reads.
type slimReceipt struct {
	id, tenant, evidenceHash, policyVersion, prevHash []byte
	createdAt                                         time.Time
	selective                                         map[string]string
	seq                                               uint64
}

// lineJSON is the reference decoding of a line.
type lineJSON struct {
	Seq         int64               `json:"seq"`
	ID          string              `json:"id"`
	Envelope    events.Envelope     `json:"envelope"`
	Disclosures []events.Disclosure `json:"disclosures"`
}

var errNotFast = errors.New("not on the fast path")

// parseLine parses line into p, decoding base64 into arena (which must have
// room: decoded bytes are never longer than the line). It returns the arena
// with the decoded bytes appended.
func parseLine(line []byte, p *parsedLine, arena []byte) ([]byte, error) {
	if a, err := parseLineFast(line, p, arena); err == nil {
		return a, nil
	}
	var l lineJSON
	if err := json.Unmarshal(line, &l); err != nil {
		return arena, err
	}
	p.seq, p.id, p.payloadType, p.payload = l.Seq, []byte(l.ID), []byte(l.Envelope.PayloadType), l.Envelope.Payload
	p.sigs = p.sigs[:0]
	for _, s := range l.Envelope.Signatures {
		p.sigs = append(p.sigs, parsedSig{keyID: []byte(s.KeyID), sig: s.Sig})
	}
	p.disclosures = l.Disclosures
	return arena, nil
}

func parseLineFast(line []byte, p *parsedLine, arena []byte) ([]byte, error) {
	s := scanner{b: line}
	var ok bool
	if !s.lit(`{"seq":`) {
		return arena, errNotFast
	}
	n, ok := s.uint()
	if !ok || n > 1<<62 {
		return arena, errNotFast
	}
	p.seq = int64(n)
	if !s.lit(`,"id":`) {
		return arena, errNotFast
	}
	if p.id, ok = s.asciiString(); !ok {
		return arena, errNotFast
	}
	if !s.lit(`,"envelope":{"payloadType":`) {
		return arena, errNotFast
	}
	if p.payloadType, ok = s.asciiString(); !ok {
		return arena, errNotFast
	}
	if !s.lit(`,"payload":`) {
		return arena, errNotFast
	}
	start := len(arena)
	if arena, ok = s.base64(arena); !ok {
		return arena[:start], errNotFast
	}
	payloadEnd := len(arena)
	if !s.lit(`,"signatures":[`) {
		return arena[:start], errNotFast
	}
	p.sigs = p.sigs[:0]
	type span struct {
		key      []byte
		from, to int
	}
	var spans [4]span
	nsig := 0
	for {
		if nsig == len(spans) || !s.lit(`{"keyid":`) {
			return arena[:start], errNotFast
		}
		key, ok := s.asciiString()
		if !ok || !s.lit(`,"sig":`) {
			return arena[:start], errNotFast
		}
		from := len(arena)
		if arena, ok = s.base64(arena); !ok || !s.lit(`}`) {
			return arena[:start], errNotFast
		}
		spans[nsig] = span{key, from, len(arena)}
		nsig++
		if s.lit(`,`) {
			continue
		}
		if s.lit(`]}`) {
			break
		}
		return arena[:start], errNotFast
	}
	// Disclosures are rare: leave lines that carry them to encoding/json.
	if !s.lit(`}`) || s.i != len(s.b) {
		return arena[:start], errNotFast
	}
	p.payload = arena[start:payloadEnd:payloadEnd]
	for _, sp := range spans[:nsig] {
		p.sigs = append(p.sigs, parsedSig{keyID: sp.key, sig: arena[sp.from:sp.to:sp.to]})
	}
	p.disclosures = nil
	return arena, nil
}

// parsePayload decodes the receipt fields the verifier reads. On the slow
// path it decodes a whole events.Receipt, so errors are exactly the ledger's.
func parsePayload(payload []byte, r *slimReceipt) error {
	if parsePayloadFast(payload, r) {
		return nil
	}
	full, err := events.ParseReceipt(payload)
	if err != nil {
		return err
	}
	*r = slimReceipt{id: []byte(full.ID), tenant: []byte(full.Tenant), evidenceHash: []byte(full.EvidenceHash),
		policyVersion: []byte(full.PolicyVersion), prevHash: []byte(full.PrevHash), createdAt: full.CreatedAt,
		selective: full.Selective, seq: full.Seq}
	return nil
}

// receiptKeys are events.Receipt's JSON keys in MarshalReceipt order.
var receiptKeys = []string{"id", "action", "actor", "tenant", "decision", "evidence_hash", "policy_version", "created_at",
	"selective", "seq", "prev_hash", "command_id", "rationale", "obligations", "subject", "command", "change"}

func parsePayloadFast(b []byte, r *slimReceipt) bool {
	s := scanner{b: b}
	if !s.lit(`{`) {
		return false
	}
	var ok bool
	for i, k := range receiptKeys {
		if i > 0 && !s.lit(`,`) {
			return false
		}
		if !s.key(k) {
			return false
		}
		switch k {
		case "id":
			r.id, ok = s.asciiString()
		case "tenant":
			r.tenant, ok = s.asciiString()
		case "evidence_hash":
			r.evidenceHash, ok = s.asciiString()
		case "policy_version":
			r.policyVersion, ok = s.asciiString()
		case "prev_hash":
			r.prevHash, ok = s.asciiString()
		case "action", "actor", "decision", "command_id", "subject":
			ok = s.peek('"') && s.skipValue(0)
		case "created_at":
			from := s.i
			if _, ok = s.asciiString(); ok {
				ok = r.createdAt.UnmarshalJSON(b[from:s.i]) == nil
			}
		case "selective":
			r.selective, ok = s.stringMap()
		case "seq":
			r.seq, ok = s.uint()
		default: // json.RawMessage fields: any valid JSON value
			ok = s.skipValue(0)
		}
		if !ok {
			return false
		}
	}
	return s.lit(`}`) && s.i == len(b)
}

// scanner walks JSON bytes. Every method returns false (and leaves the
// position unspecified) on input it does not accept.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) lit(l string) bool {
	if len(s.b)-s.i >= len(l) && string(s.b[s.i:s.i+len(l)]) == l {
		s.i += len(l)
		return true
	}
	return false
}

func (s *scanner) peek(c byte) bool { return s.i < len(s.b) && s.b[s.i] == c }

// key consumes `"k":`.
func (s *scanner) key(k string) bool {
	return s.lit(`"`) && s.lit(k) && s.lit(`":`)
}

// asciiString consumes a string of printable ASCII without escapes and
// returns its content: exactly what encoding/json would decode it to.
func (s *scanner) asciiString() ([]byte, bool) {
	if !s.peek('"') {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		c := s.b[j]
		if c == '"' {
			s.i = j + 1
			return s.b[start:j:j], true
		}
		if c < 0x20 || c > 0x7e || c == '\\' {
			return nil, false
		}
	}
	return nil, false
}

// base64 consumes a string of standard base64 and appends its decoding to
// dst, with the decoder encoding/json uses for []byte.
func (s *scanner) base64(dst []byte) ([]byte, bool) {
	if !s.peek('"') {
		return dst, false
	}
	end := bytes.IndexByte(s.b[s.i+1:], '"')
	if end < 0 {
		return dst, false
	}
	src := s.b[s.i+1 : s.i+1+end]
	for _, c := range src {
		if c == '\\' || c < 0x20 {
			return dst, false
		}
	}
	n := base64.StdEncoding.DecodedLen(len(src))
	if cap(dst)-len(dst) < n {
		return dst, false
	}
	m, err := base64.StdEncoding.Decode(dst[len(dst):len(dst)+n], src)
	if err != nil {
		return dst, false
	}
	s.i += end + 2
	return dst[:len(dst)+m], true
}

// uint consumes a JSON integer without sign, fraction or exponent that fits
// in a uint64.
func (s *scanner) uint() (uint64, bool) {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	digits := s.b[start:s.i]
	if len(digits) == 0 || len(digits) > 1 && digits[0] == '0' {
		return 0, false
	}
	if s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return 0, false
	}
	n, err := strconv.ParseUint(string(digits), 10, 64)
	return n, err == nil
}

// stringMap consumes an object of ASCII strings with distinct keys.
func (s *scanner) stringMap() (map[string]string, bool) {
	if !s.lit(`{`) {
		return nil, false
	}
	if s.lit(`}`) {
		return nil, true // empty (encoding/json gives an empty map; lookups agree)
	}
	m := map[string]string{}
	for {
		k, ok := s.asciiString()
		if !ok || !s.lit(`:`) {
			return nil, false
		}
		v, ok := s.asciiString()
		if !ok {
			return nil, false
		}
		if _, dup := m[string(k)]; dup {
			return nil, false // encoding/json keeps the last; let it decide
		}
		m[string(k)] = string(v)
		if s.lit(`}`) {
			return m, true
		}
		if !s.lit(`,`) {
			return nil, false
		}
	}
}

const maxFastDepth = 256

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (s *scanner) ws() {
	for s.i < len(s.b) && isSpace(s.b[s.i]) {
		s.i++
	}
}

// skipValue consumes one JSON value (RFC 8259, as encoding/json's scanner
// accepts it: any byte ≥ 0x20 inside strings, no depth beyond maxFastDepth).
func (s *scanner) skipValue(depth int) bool {
	if depth > maxFastDepth || s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.skipString()
	case c == '{':
		s.i++
		s.ws()
		if s.lit(`}`) {
			return true
		}
		for {
			if !s.skipString() {
				return false
			}
			s.ws()
			if !s.lit(`:`) {
				return false
			}
			s.ws()
			if !s.skipValue(depth + 1) {
				return false
			}
			s.ws()
			if s.lit(`}`) {
				return true
			}
			if !s.lit(`,`) {
				return false
			}
			s.ws()
		}
	case c == '[':
		s.i++
		s.ws()
		if s.lit(`]`) {
			return true
		}
		for {
			if !s.skipValue(depth + 1) {
				return false
			}
			s.ws()
			if s.lit(`]`) {
				return true
			}
			if !s.lit(`,`) {
				return false
			}
			s.ws()
		}
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.skipNumber()
	}
	return false
}

func (s *scanner) skipString() bool {
	if !s.peek('"') {
		return false
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s.b)-s.i < 5 {
					return false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		}
	}
	return false
}

func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

func (s *scanner) skipNumber() bool {
	s.lit("-")
	if s.lit("0") {
		// no more integer digits after a leading zero
	} else if s.i >= len(s.b) || s.b[s.i] < '1' || s.b[s.i] > '9' || s.digits() == 0 {
		return false
	}
	if s.lit(".") && s.digits() == 0 {
		return false
	}
	if s.lit("e") || s.lit("E") {
		if !s.lit("+") {
			s.lit("-")
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}
