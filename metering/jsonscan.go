package metering

import (
	"fmt"
	"mime"
	"slices"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// A small single-pass JSON reader for the ingest hot path. encoding/json
// validated a batch, split it, validated each event again and decoded it
// through reflection into a map: about 30 µs per event, too slow for the
// 50,000 events/s target on two cores. This reader walks the body once,
// matches attribute names exactly (CloudEvents names are case-sensitive;
// encoding/json is not), and rejects duplicate names. The fuzz test holds
// it to encoding/json: whatever it accepts is valid JSON.

// syntaxError is malformed JSON: the request is rejected as a whole.
type syntaxError struct {
	off int
	msg string
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("malformed JSON at byte %d: %s", e.off, e.msg)
}

// maxDepth bounds nesting inside ignored values (extension attributes,
// unknown members); nothing the ingest keeps is nested deeper than 3.
const maxDepth = 64

type scanner struct {
	buf []byte
	pos int
}

func (s *scanner) fail(msg string) error { return &syntaxError{off: s.pos, msg: msg} }

func (s *scanner) ws() {
	for s.pos < len(s.buf) {
		switch s.buf[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte, 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.pos >= len(s.buf) {
		return 0
	}
	return s.buf[s.pos]
}

// atEnd skips white space and reports whether the input is used up.
func (s *scanner) atEnd() bool {
	s.ws()
	return s.pos >= len(s.buf)
}

func (s *scanner) expect(c byte) error {
	if s.peek() != c {
		if s.pos >= len(s.buf) {
			return s.fail(fmt.Sprintf("unexpected end, want %q", c))
		}
		return s.fail(fmt.Sprintf("unexpected %q, want %q", s.buf[s.pos], c))
	}
	s.pos++
	return nil
}

// stringEnd scans the string starting at s.pos ('"') and returns the index
// of its closing quote and whether it contains escapes.
func (s *scanner) stringEnd() (int, bool, error) {
	i := s.pos + 1
	escaped := false
	for i < len(s.buf) {
		c := s.buf[i]
		switch {
		case c == '"':
			return i, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(s.buf) {
				return 0, false, &syntaxError{off: i, msg: "unterminated escape"}
			}
			switch s.buf[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(s.buf) || !isHex4(s.buf[i+2:i+6]) {
					return 0, false, &syntaxError{off: i, msg: `bad \u escape`}
				}
				i += 6
			default:
				return 0, false, &syntaxError{off: i, msg: fmt.Sprintf("bad escape \\%c", s.buf[i+1])}
			}
		case c < 0x20:
			return 0, false, &syntaxError{off: i, msg: "control character in string"}
		default:
			i++
		}
	}
	return 0, false, &syntaxError{off: s.pos, msg: "unterminated string"}
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// str reads a string value; s.pos must be at its opening quote.
func (s *scanner) str() (string, error) {
	end, escaped, err := s.stringEnd()
	if err != nil {
		return "", err
	}
	raw := s.buf[s.pos+1 : end]
	s.pos = end + 1
	if !escaped {
		return string(raw), nil
	}
	return unescape(raw), nil
}

// unescape decodes a validated string body the way encoding/json does
// (unpaired surrogates become U+FFFD).
func unescape(raw []byte) string {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hexRune(raw[i+2 : i+6])
			i += 6
			if utf16.IsSurrogate(r) {
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					if r2 := utf16.DecodeRune(r, hexRune(raw[i+2:i+6])); r2 != utf8.RuneError {
						out = utf8.AppendRune(out, r2)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
			continue
		default: // '"', '\\', '/'
			out = append(out, raw[i+1])
		}
		i += 2
	}
	return string(out)
}

func hexRune(b []byte) rune {
	n, _ := strconv.ParseUint(string(b), 16, 32)
	return rune(n)
}

// number reads a JSON number and returns its text.
func (s *scanner) number() (string, error) {
	start, i := s.pos, s.pos
	b := s.buf
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return "", &syntaxError{off: i, msg: "bad number"}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return "", &syntaxError{off: i, msg: "bad number"}
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return "", &syntaxError{off: i, msg: "bad number"}
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.pos = i
	return string(b[start:i]), nil
}

func (s *scanner) literal(word string) error {
	if len(s.buf)-s.pos < len(word) || string(s.buf[s.pos:s.pos+len(word)]) != word {
		return s.fail("invalid literal")
	}
	s.pos += len(word)
	return nil
}

// isNull consumes a null literal if one is next.
func (s *scanner) isNull() bool {
	if s.peek() == 'n' && len(s.buf)-s.pos >= 4 && string(s.buf[s.pos:s.pos+4]) == "null" {
		s.pos += 4
		return true
	}
	return false
}

// skip validates and skips one value of any kind.
func (s *scanner) skip(depth int) error {
	if depth > maxDepth {
		return s.fail("nested too deeply")
	}
	switch c := s.peek(); {
	case c == '"':
		end, _, err := s.stringEnd()
		if err != nil {
			return err
		}
		s.pos = end + 1
		return nil
	case c == '-' || isDigit(c):
		_, err := s.number()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '[':
		s.pos++
		if s.peek() == ']' {
			s.pos++
			return nil
		}
		for {
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			if done, err := s.next(']'); done || err != nil {
				return err
			}
		}
	case c == '{':
		return s.members(func(string) error { return s.skip(depth + 1) })
	case c == 0:
		return s.fail("unexpected end")
	default:
		return s.fail(fmt.Sprintf("unexpected %q", c))
	}
}

// next consumes "," (false) or the closing byte (true).
func (s *scanner) next(closing byte) (bool, error) {
	switch s.peek() {
	case ',':
		s.pos++
		return false, nil
	case closing:
		s.pos++
		return true, nil
	default:
		return false, s.fail(fmt.Sprintf("want ',' or %q", closing))
	}
}

// members walks an object at s.pos, calling fn with each name; fn must
// consume the value.
func (s *scanner) members(fn func(name string) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	for {
		if s.peek() != '"' {
			return s.fail("want a member name")
		}
		name, err := s.str()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(name); err != nil {
			return err
		}
		if done, err := s.next('}'); done || err != nil {
			return err
		}
	}
}

// wireEvent is what an event object held, before validation.
type wireEvent struct {
	attrs   [numAttrs]string
	present [numAttrs]bool
	data    Data
	hasData bool
	extra   []string // unknown or ignored member names, with their problem
	count   int
}

const (
	attrSpecVersion = iota
	attrID
	attrSource
	attrType
	attrSubject
	attrTime
	attrDataContentType
	numAttrs
)

var attrNames = [numAttrs]string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype"}

func attrIndex(name string) int {
	switch name {
	case "specversion":
		return attrSpecVersion
	case "id":
		return attrID
	case "source":
		return attrSource
	case "type":
		return attrType
	case "subject":
		return attrSubject
	case "time":
		return attrTime
	case "datacontenttype":
		return attrDataContentType
	}
	return -1
}

// decodeValue reads one JSON value as an event. A *syntaxError means the
// input is not JSON; otherwise every problem is in the ValidationError.
//
// id is the event's id when it had a usable one, also for an invalid event.
func (v Validator) decodeValue(s *scanner) (e Event, id string, _ *ValidationError, _ error) {
	ve := &ValidationError{}
	if s.peek() != '{' {
		if err := s.skip(0); err != nil {
			return Event{}, "", nil, err
		}
		ve.Malformed = true
		ve.add("body", "must be a JSON object (a CloudEvent)")
		return Event{}, "", ve, nil
	}
	var w wireEvent
	var sawData bool
	err := s.members(func(name string) error {
		w.count++
		if i := attrIndex(name); i >= 0 {
			if w.present[i] {
				ve.add(name, "duplicate attribute")
				return s.skip(0)
			}
			if s.isNull() {
				return nil // a null attribute is an absent one (CloudEvents JSON format)
			}
			w.present[i] = true
			if s.peek() != '"' {
				ve.add(name, "must be a string")
				w.attrs[i] = ""
				return s.skip(0)
			}
			val, err := s.str()
			w.attrs[i] = val
			return err
		}
		if name == "data" {
			if sawData {
				ve.add(name, "duplicate attribute")
				return s.skip(0)
			}
			sawData = true
			if s.isNull() {
				return nil
			}
			if s.peek() != '{' {
				ve.add("data", "must be a JSON object {\"quantity\", \"unit\", \"tags\"}")
				return s.skip(0)
			}
			w.hasData = true
			d, err := decodeData(s, ve)
			w.data = d
			return err
		}
		if slices.Contains(w.extra, name) {
			ve.add(fieldName(name), "duplicate attribute")
			return s.skip(0)
		}
		w.extra = append(w.extra, name)
		switch c := s.peek(); {
		case name == "data_base64":
		case !extensionName.MatchString(name):
		case c == '{' || c == '[':
			ve.add(name, "an extension attribute must be a string, number or boolean")
		}
		return s.skip(0)
	})
	if err != nil {
		return Event{}, "", nil, err
	}
	if rid := w.attrs[attrID]; len(rid) <= MaxIDChars && checkText(rid, MaxIDChars) == nil {
		id = rid
	}
	if w.count > maxAttributes {
		ve.Errors = ve.Errors[:0]
		ve.add("body", "has %d attributes, at most %d are allowed", w.count, maxAttributes)
		return Event{}, id, ve, nil
	}
	e = v.check(&w, ve)
	if len(ve.Errors) > 0 {
		return Event{}, id, ve, nil
	}
	return e, id, nil, nil
}

// check validates what was read, in a fixed field order; errors found
// while reading (type errors, duplicates, data members) are kept.
func (v Validator) check(w *wireEvent, ve *ValidationError) Event {
	early := ve.Errors
	ve.Errors = nil
	for i, name := range attrNames {
		if i == attrDataContentType {
			continue
		}
		if !w.present[i] {
			ve.add(name, "required")
		} else if w.attrs[i] == "" && !hasField(early, name) {
			ve.add(name, "must not be empty")
		}
	}
	e := Event{SpecVersion: w.attrs[attrSpecVersion], ID: w.attrs[attrID], Source: w.attrs[attrSource], Type: w.attrs[attrType],
		Subject: w.attrs[attrSubject], DataContentType: w.attrs[attrDataContentType], Data: w.data}
	if e.SpecVersion != "" && e.SpecVersion != SpecVersion {
		ve.add("specversion", "must be %q, got %q", SpecVersion, e.SpecVersion)
	}
	if ts := w.attrs[attrTime]; ts != "" {
		e.Time = v.checkTime(ve, ts)
	}
	if e.DataContentType != "" {
		if !isJSONMediaType(e.DataContentType) {
			ve.add("datacontenttype", "must be %q when present, got %.80q", jsonContentType, e.DataContentType)
		} else {
			e.DataContentType = jsonContentType
		}
	}
	e.checkAttributes(ve)
	if !w.hasData && !slices.Contains(w.extra, "data_base64") && !hasField(early, "data") {
		ve.add("data", "required")
	}
	ve.Errors = append(ve.Errors, early...)
	slices.Sort(w.extra)
	for _, k := range w.extra {
		switch {
		case k == "data_base64":
			ve.add(k, "binary data is not accepted; send data as a JSON object")
		case !extensionName.MatchString(k):
			ve.add(fieldName(k), "unknown attribute (CloudEvents extension names are 1-20 lowercase letters or digits)")
		}
	}
	return e
}

func hasField(errs []FieldError, field string) bool {
	for _, fe := range errs {
		if fe.Field == field {
			return true
		}
	}
	return false
}

func (v Validator) checkTime(ve *ValidationError, ts string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, ts)
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	skew := v.MaxFutureSkew
	if skew <= 0 {
		skew = DefaultFutureSkew
	}
	switch {
	case err != nil:
		ve.add("time", "must be an RFC 3339 timestamp such as 2026-01-02T15:04:05Z, got %.80q", ts)
	case t.Before(minTime):
		ve.add("time", "must not be before 1970-01-01T00:00:00Z")
	case t.After(now().Add(skew)):
		ve.add("time", "is more than %s in the future", skew)
	default:
		return t.UTC()
	}
	return time.Time{}
}

func decodeData(s *scanner, ve *ValidationError) (Data, error) {
	var d Data
	var seenQ, seenU, seenT bool
	var extra []string
	err := s.members(func(name string) error {
		dup := func(seen *bool) bool {
			if *seen {
				ve.add("data."+name, "duplicate member")
				return true
			}
			*seen = true
			return false
		}
		switch name {
		case "quantity":
			if dup(&seenQ) {
				return s.skip(0)
			}
			switch c := s.peek(); {
			case c == '"':
				str, err := s.str()
				if err != nil {
					return err
				}
				q, qerr := normalizeDecimal(str, false)
				if qerr != nil {
					ve.add("data.quantity", "%v", qerr)
				}
				d.Quantity = q
			case c == '-' || isDigit(c):
				num, err := s.number()
				if err != nil {
					return err
				}
				q, qerr := normalizeDecimal(num, true)
				if qerr != nil {
					ve.add("data.quantity", "%v", qerr)
				}
				d.Quantity = q
			case s.isNull():
				ve.add("data.quantity", "required")
			default:
				ve.add("data.quantity", "must be a JSON number or a decimal string, e.g. 12.5 or \"12.5\"")
				return s.skip(0)
			}
			return nil
		case "unit":
			if dup(&seenU) {
				return s.skip(0)
			}
			if s.isNull() {
				ve.add("data.unit", "required")
				return nil
			}
			if s.peek() != '"' {
				ve.add("data.unit", "must be a string")
				return s.skip(0)
			}
			u, err := s.str()
			if err != nil {
				return err
			}
			if !isUnit(u) {
				ve.add("data.unit", "must be a unit name such as \"second\" (%s), got %.40q", UnitPattern, u)
			} else {
				d.Unit = u
			}
			return nil
		case "tags":
			if dup(&seenT) {
				return s.skip(0)
			}
			if s.isNull() {
				return nil
			}
			if s.peek() != '{' {
				ve.add("data.tags", "must be a JSON object of string values")
				return s.skip(0)
			}
			tags, err := decodeTags(s, ve)
			d.Tags = tags
			return err
		default:
			extra = append(extra, name)
			return s.skip(0)
		}
	})
	if !seenQ {
		ve.add("data.quantity", "required")
	}
	if !seenU {
		ve.add("data.unit", "required")
	}
	slices.Sort(extra)
	for _, k := range extra {
		ve.add("data."+fieldName(k), "unknown field (data has quantity, unit and tags)")
	}
	return d, err
}

func decodeTags(s *scanner, ve *ValidationError) (map[string]string, error) {
	tags := map[string]string{}
	n := 0
	bad := false
	err := s.members(func(k string) error {
		n++
		field := "data.tags." + fieldName(k)
		if s.peek() != '"' {
			ve.add(field, "must be a string")
			bad = true
			return s.skip(0)
		}
		val, err := s.str()
		if err != nil {
			return err
		}
		switch _, dup := tags[k]; {
		case n > MaxTags:
		case k == "":
			ve.add("data.tags", "a tag name must not be empty")
			bad = true
		case dup:
			ve.add(field, "duplicate tag")
			bad = true
		default:
			if err := checkText(k, MaxTagKeyChars); err != nil {
				ve.add(field, "tag name %v", err)
				bad = true
			} else if err := checkText(val, MaxTagValueChars); err != nil {
				ve.add(field, "%v", err)
				bad = true
			} else {
				tags[k] = val
			}
		}
		return nil
	})
	if n > MaxTags {
		ve.add("data.tags", "has %d tags, at most %d are allowed", n, MaxTags)
		return nil, err
	}
	if len(tags) == 0 || bad {
		return nil, err
	}
	return tags, err
}

// isJSONMediaType: "application/json", optionally with parameters.
func isJSONMediaType(s string) bool {
	if s == jsonContentType {
		return true
	}
	mt, _, err := mime.ParseMediaType(s)
	return err == nil && mt == jsonContentType
}

// appendEvent appends e as JSON exactly as encoding/json would marshal it
// (same member order, escaping and time format), without reflection.
func appendEvent(b []byte, e Event) []byte {
	b = append(b, `{"specversion":`...)
	b = appendJSONString(b, e.SpecVersion)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"source":`...)
	b = appendJSONString(b, e.Source)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.Type)
	b = append(b, `,"subject":`...)
	b = appendJSONString(b, e.Subject)
	b = append(b, `,"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.DataContentType != "" {
		b = append(b, `,"datacontenttype":`...)
		b = appendJSONString(b, e.DataContentType)
	}
	b = append(b, `,"data":{"quantity":`...)
	b = appendJSONString(b, e.Data.Quantity)
	b = append(b, `,"unit":`...)
	b = appendJSONString(b, e.Data.Unit)
	if len(e.Data.Tags) > 0 {
		b = append(b, `,"tags":{`...)
		keys := make([]string, 0, len(e.Data.Tags))
		for k := range e.Data.Tags {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, e.Data.Tags[k])
		}
		b = append(b, '}')
	}
	return append(b, "}}"...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString mirrors encoding/json's string encoding with HTML
// escaping (its default).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
