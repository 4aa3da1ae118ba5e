package cogs

import (
	"encoding/json"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/companyos/companyos/metering"
)

// The projector decodes every record of metering.events.v1, so decoding is
// on its hot path. decodeFast handles the shape the ingest API writes
// (metering.Record: known members, each once, string values without
// escapes) without reflection; for anything else it declines and the
// record goes through encoding/json, whose result (value or error) is the
// reference: decodeFast never accepts an input that encoding/json would
// decode differently (decode_test.go checks it against encoding/json).

// tagPair is one raw tag as sent.
type tagPair struct{ key, value string }

// Members of the event and of its data that decodeFast knows.
const (
	mSpecVersion = 1 << iota
	mID
	mSource
	mType
	mSubject
	mTime
	mDataContentType
	mData
	mQuantity
	mUnit
	mTags
)

// decodeFast decodes value into e and tags (appended, in the order sent),
// or returns false when encoding/json must decide. Strings that repeat from
// event to event come from in (nil: none shared).
func decodeFast(value []byte, e *metering.Event, tags []tagPair, in *interner) ([]tagPair, bool) {
	s := fastScanner{b: value, in: in}
	seen := 0
	ok := s.object(func(name []byte) bool {
		var bit int
		var dst *string
		shared := true // a value that repeats: interned
		switch string(name) {
		case "specversion":
			bit, dst = mSpecVersion, &e.SpecVersion
		case "id":
			bit, dst, shared = mID, &e.ID, false
		case "source":
			bit, dst = mSource, &e.Source
		case "type":
			bit, dst = mType, &e.Type
		case "subject":
			bit, dst = mSubject, &e.Subject
		case "datacontenttype":
			bit, dst = mDataContentType, &e.DataContentType
		case "time":
			bit = mTime
		case "data":
			bit = mData
		default:
			return false // unknown or differently cased member: encoding/json's rules apply
		}
		if seen&bit != 0 {
			return false // a repeated member: encoding/json takes the last one
		}
		seen |= bit
		switch bit {
		case mTime:
			raw, ok := s.rawString()
			if !ok {
				return false
			}
			// encoding/json hands the quoted string to time.Time.UnmarshalJSON.
			return e.Time.UnmarshalJSON(raw) == nil
		case mData:
			return s.object(func(name []byte) bool {
				switch string(name) {
				case "quantity":
					bit, dst, shared = mQuantity, &e.Data.Quantity, false
				case "unit":
					bit, dst = mUnit, &e.Data.Unit
				case "tags":
					bit, dst = mTags, nil
				default:
					return false
				}
				if seen&bit != 0 {
					return false
				}
				seen |= bit
				if dst != nil {
					v, ok := s.str(shared)
					*dst = v
					return ok
				}
				n := len(tags)
				ok := s.object(func(k []byte) bool {
					v, ok := s.str(true)
					if !ok {
						return false
					}
					for _, t := range tags[n:] {
						if t.key == string(k) {
							return false // a repeated tag: encoding/json keeps the last one
						}
					}
					tags = append(tags, tagPair{key: s.in.intern(k), value: v})
					return true
				})
				return ok
			})
		}
		v, ok := s.str(shared)
		*dst = v
		return ok
	})
	if !ok {
		return tags, false
	}
	s.ws()
	return tags, s.i == len(s.b)
}

// fastScanner reads the subset of JSON that decodeFast accepts.
type fastScanner struct {
	b  []byte
	i  int
	in *interner
}

func (s *fastScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// object reads {"name": value, …}, calling member with each name and the
// scanner positioned at the value; member must consume the value.
func (s *fastScanner) object(member func(name []byte) bool) bool {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		name, ok := s.plain()
		if !ok {
			return false
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		if !member(name) {
			return false
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// plain reads a string without escapes and returns its content; false for
// anything else, including control characters and invalid UTF-8 (which
// encoding/json would replace).
func (s *fastScanner) plain() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	ascii := true
	for j := start; j < len(s.b); j++ {
		c := s.b[j]
		switch {
		case c == '"':
			v := s.b[start:j]
			if !ascii && !utf8.Valid(v) {
				return nil, false
			}
			s.i = j + 1
			return v, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false
}

// str reads a plain string value; interned when shared.
func (s *fastScanner) str(shared bool) (string, bool) {
	v, ok := s.plain()
	if !ok {
		return "", false
	}
	if shared {
		return s.in.intern(v), true
	}
	return string(v), true
}

// interner shares the strings that repeat from event to event (types,
// units, subjects, sources, tag keys and values), so that decoding
// allocates once per distinct value rather than once per event. A slot is
// replaced on collision; nothing depends on a hit. Safe for concurrent use.
type interner struct {
	seed  maphash.Seed
	slots [4096]atomic.Pointer[string]
}

func newInterner() *interner { return &interner{seed: maphash.MakeSeed()} }

func (in *interner) intern(b []byte) string {
	if in == nil || len(b) == 0 || len(b) > 64 {
		return string(b)
	}
	slot := &in.slots[maphash.Bytes(in.seed, b)&(uint64(len(in.slots))-1)]
	if p := slot.Load(); p != nil && *p == string(b) {
		return *p
	}
	v := string(b)
	slot.Store(&v)
	return v
}

// rawString reads a plain string and returns it with its quotes.
func (s *fastScanner) rawString() ([]byte, bool) {
	start := s.i
	if _, ok := s.plain(); !ok {
		return nil, false
	}
	return s.b[start:s.i], true
}

// decodeEvent decodes a record value the way json.Unmarshal into a
// metering.Event does, returning the tags as pairs sorted by key.
func decodeEvent(value []byte, tags []tagPair, in *interner) (metering.Event, []tagPair, error) {
	var e metering.Event
	if out, ok := decodeFast(value, &e, tags, in); ok {
		slices.SortFunc(out, func(a, b tagPair) int { return strings.Compare(a.key, b.key) })
		return e, out, nil
	}
	e = metering.Event{}
	if err := json.Unmarshal(value, &e); err != nil {
		return e, nil, err
	}
	tags = tags[:0]
	for k, v := range e.Data.Tags {
		tags = append(tags, tagPair{k, v})
	}
	slices.SortFunc(tags, func(a, b tagPair) int { return strings.Compare(a.key, b.key) })
	return e, tags, nil
}

// tagCache memoises the raw tags JSON and the normalised tags of a set of
// raw tags: tags repeat (services × regions × teams), and normalising them
// costs maps and sorting per event. Entries are never changed once stored,
// and their slices are shared read-only by the rows that use them.
type tagCache struct {
	m sync.Map // raw tags JSON → *tagEntry
	n atomic.Int64
}

// tagCacheMax bounds the entries; past it, tags are normalised per event.
const tagCacheMax = 1 << 14

type tagEntry struct {
	raw  string // as json.Marshal(map[string]string) prints the raw tags
	tags Tags
}

// lookup returns the raw JSON and normalised tags of sorted raw tags.
func (c *tagCache) lookup(rules *Rules, sorted []tagPair, scratch []byte) (*tagEntry, []byte, error) {
	b, plain := appendTagsJSON(scratch[:0], sorted)
	if plain {
		if v, ok := c.m.Load(string(b)); ok { // no allocation for the look-up
			return v.(*tagEntry), b, nil
		}
	}
	raw := map[string]string{}
	for _, t := range sorted {
		raw[t.key] = t.value
	}
	ent := &tagEntry{raw: "{}", tags: rules.NormalizeTags(raw)}
	if len(raw) > 0 {
		if plain {
			ent.raw = string(b)
		} else {
			j, err := json.Marshal(raw)
			if err != nil {
				return nil, b, err
			}
			ent.raw = string(j)
		}
	}
	if plain && c.n.Load() < tagCacheMax {
		if _, loaded := c.m.LoadOrStore(ent.raw, ent); !loaded {
			c.n.Add(1)
		}
	}
	return ent, b, nil
}

// appendTagsJSON appends sorted tags as json.Marshal prints a
// map[string]string, when every key and value is plain printable ASCII that
// encoding/json does not escape; plain is false otherwise (the caller then
// uses json.Marshal).
func appendTagsJSON(b []byte, sorted []tagPair) ([]byte, bool) {
	b = append(b, '{')
	for i, t := range sorted {
		if !jsonPlain(t.key) || !jsonPlain(t.value) {
			return b, false
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, t.key...)
		b = append(b, `":"`...)
		b = append(b, t.value...)
		b = append(b, '"')
	}
	return append(b, '}'), true
}

func jsonPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
