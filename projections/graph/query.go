package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Op names a query form.
type Op string

// Query forms (schemas/graph-query.ebnf).
const (
	// OpRel: nodes within Depth hops of Start whose id matches Pattern,
	// each with a shortest path. rel(3hop, 'svc:A'→'db:*').
	OpRel Op = "rel"
	// OpNeighbors: every node within Depth (default 1) hops of Start, each
	// with a shortest path. neighbors('svc:A', depth=2).
	OpNeighbors Op = "neighbors"
	// OpPath: one shortest path from Start to Target.
	// path('user:alice', 'dataset:prod').
	OpPath Op = "path"
	// OpWhoCan: principals the policy allows to perform Action on Resource.
	// who_can('entity.update', 'dataset:prod').
	OpWhoCan Op = "who_can"
)

// Dir is the direction edges are followed in.
type Dir string

// Directions. DirOut is the default of every form.
const (
	DirOut  Dir = "out"  // from → to
	DirIn   Dir = "in"   // to → from
	DirBoth Dir = "both" // either way
)

// Query is the parsed form of a graph query, shared by the text language
// (Parse) and the structured JSON form (ParseJSON, StructuredQuery.Query).
// Variables are already substituted. Build one by hand only in tests;
// Execute validates it either way.
type Query struct {
	Op Op
	// Start is the node a walk starts from (rel, neighbors, path).
	Start string
	// Pattern is the glob (see MatchGlob) the ids of rel's results match.
	Pattern string
	// Target is where path ends.
	Target string
	// Action and Resource are who_can's arguments.
	Action, Resource string
	// Depth is rel's hop count (required, >= 1), neighbors' depth (default
	// 1) or path's maximum length (0 = Options.MaxDepth).
	Depth int
	// Rels restricts the walk to these relation types (sorted, no
	// duplicates); empty follows every type.
	Rels []string
	// Dir is the direction edges are followed in (default DirOut).
	Dir Dir
}

// normalize fills defaults and sorts Rels, so that equal queries have equal
// String forms (the cursor hash depends on it).
func (q Query) normalize() Query {
	if q.Dir == "" && q.Op != OpWhoCan {
		q.Dir = DirOut
	}
	if q.Op == OpNeighbors && q.Depth == 0 {
		q.Depth = 1
	}
	if len(q.Rels) > 0 {
		q.Rels = slices.Compact(slices.Sorted(slices.Values(q.Rels)))
	}
	return q
}

// Validate checks that q is a complete query. Errors are *ParseError with
// Pos 0, naming the field.
func (q Query) Validate() error {
	bad := func(format string, args ...any) error {
		return &ParseError{Msg: fmt.Sprintf(format, args...)}
	}
	need := func(field, v string) error {
		if v == "" {
			return bad("%s is required for %s", field, q.Op)
		}
		return nil
	}
	var err error
	switch q.Op {
	case OpRel:
		if err = need("start", q.Start); err == nil {
			err = need("pattern", q.Pattern)
		}
		if err == nil && q.Depth < 1 {
			err = bad("hops must be at least 1 for rel, got %d", q.Depth)
		}
	case OpNeighbors:
		err = need("start", q.Start)
		if err == nil && q.Depth < 1 {
			err = bad("depth must be at least 1 for neighbors, got %d", q.Depth)
		}
	case OpPath:
		if err = need("start", q.Start); err == nil {
			err = need("target", q.Target)
		}
		if err == nil && q.Depth < 0 {
			err = bad("depth must not be negative, got %d", q.Depth)
		}
	case OpWhoCan:
		if err = need("action", q.Action); err == nil {
			err = need("resource", q.Resource)
		}
		if err == nil && (len(q.Rels) > 0 || q.Depth != 0 || q.Dir != "") {
			err = bad("who_can takes no rel, depth or dir")
		}
	case "":
		err = bad("op is required (rel, neighbors, path or who_can)")
	default:
		err = bad("unknown op %q (want rel, neighbors, path or who_can)", q.Op)
	}
	if err != nil {
		return err
	}
	if q.Op != OpWhoCan {
		switch q.Dir {
		case DirOut, DirIn, DirBoth:
		default:
			return bad("dir must be 'out', 'in' or 'both', got %q", q.Dir)
		}
	}
	for _, r := range q.Rels {
		if r == "" {
			return bad("rel names must not be empty")
		}
	}
	return nil
}

// String is the canonical text form of q: Parse(q.String(), nil) returns q.
func (q Query) String() string {
	var b strings.Builder
	b.WriteString(string(q.Op))
	b.WriteByte('(')
	switch q.Op {
	case OpRel:
		fmt.Fprintf(&b, "%dhop, %s->%s", q.Depth, quote(q.Start), quote(q.Pattern))
	case OpNeighbors:
		fmt.Fprintf(&b, "%s, depth=%d", quote(q.Start), q.Depth)
	case OpPath:
		fmt.Fprintf(&b, "%s, %s", quote(q.Start), quote(q.Target))
		if q.Depth > 0 {
			fmt.Fprintf(&b, ", depth=%d", q.Depth)
		}
	case OpWhoCan:
		fmt.Fprintf(&b, "%s, %s", quote(q.Action), quote(q.Resource))
	}
	if q.Op != OpWhoCan {
		switch len(q.Rels) {
		case 0:
		case 1:
			fmt.Fprintf(&b, ", rel=%s", quote(q.Rels[0]))
		default:
			b.WriteString(", rel=[")
			for i, r := range q.Rels {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(quote(r))
			}
			b.WriteByte(']')
		}
		fmt.Fprintf(&b, ", dir=%s", quote(string(q.Dir)))
	}
	b.WriteByte(')')
	return b.String()
}

// quote writes s as a single-quoted string literal of the language.
func quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('\'')
	return b.String()
}

// StructuredQuery is the JSON form of a query, for clients that would
// rather not build query text. A string field that starts with "$" names a
// variable. Which fields apply depends on Op:
//
//	rel:       start, pattern, hops (or depth), rel, dir
//	neighbors: start, depth (default 1), rel, dir
//	path:      start, target, depth (max length), rel, dir
//	who_can:   action, resource
type StructuredQuery struct {
	Op       string   `json:"op"`
	Start    string   `json:"start,omitempty"`
	Target   string   `json:"target,omitempty"`
	Pattern  string   `json:"pattern,omitempty"`
	Action   string   `json:"action,omitempty"`
	Resource string   `json:"resource,omitempty"`
	Hops     int      `json:"hops,omitempty"`
	Depth    int      `json:"depth,omitempty"`
	Rel      []string `json:"rel,omitempty"`
	Dir      string   `json:"dir,omitempty"`
}

// Query converts s to a Query, substituting variables from vars (see
// Parse). Errors are *ParseError with Pos 0.
func (s StructuredQuery) Query(vars map[string]any) (Query, error) {
	q := Query{Op: Op(s.Op), Depth: s.Depth, Dir: Dir(s.Dir)}
	if q.Op == OpRel {
		switch {
		case s.Hops != 0 && s.Depth != 0 && s.Hops != s.Depth:
			return Query{}, &ParseError{Msg: "rel: give hops or depth, not both"}
		case s.Hops != 0:
			q.Depth = s.Hops
		}
	} else if s.Hops != 0 {
		return Query{}, &ParseError{Msg: fmt.Sprintf("hops applies only to rel, not %s", s.Op)}
	}
	fields := []struct {
		name string
		in   string
		out  *string
	}{
		{"start", s.Start, &q.Start}, {"target", s.Target, &q.Target}, {"pattern", s.Pattern, &q.Pattern},
		{"action", s.Action, &q.Action}, {"resource", s.Resource, &q.Resource}, {"dir", s.Dir, (*string)(&q.Dir)},
	}
	for _, f := range fields {
		v, err := structuredVar(f.name, f.in, vars)
		if err != nil {
			return Query{}, err
		}
		*f.out = v
	}
	for _, r := range s.Rel {
		if name, ok := strings.CutPrefix(r, "$"); ok {
			list, err := varStrings(name, vars)
			if err != nil {
				return Query{}, &ParseError{Msg: "rel: " + err.Error()}
			}
			q.Rels = append(q.Rels, list...)
			continue
		}
		q.Rels = append(q.Rels, r)
	}
	q = q.normalize()
	if err := q.Validate(); err != nil {
		return Query{}, err
	}
	return q, nil
}

func structuredVar(field, v string, vars map[string]any) (string, error) {
	name, ok := strings.CutPrefix(v, "$")
	if !ok {
		return v, nil
	}
	s, err := varString(name, vars)
	if err != nil {
		return "", &ParseError{Msg: field + ": " + err.Error()}
	}
	return s, nil
}

// ParseJSON decodes a StructuredQuery strictly (unknown fields and trailing
// data are errors) and converts it.
func ParseJSON(data []byte, vars map[string]any) (Query, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s StructuredQuery
	if err := dec.Decode(&s); err != nil {
		return Query{}, &ParseError{Msg: "structured query: " + err.Error()}
	}
	if dec.More() {
		return Query{}, &ParseError{Msg: "structured query: trailing data after the object"}
	}
	return s.Query(vars)
}

// Variable lookups shared by both forms.

func varString(name string, vars map[string]any) (string, error) {
	v, ok := vars[name]
	if !ok {
		return "", fmt.Errorf("undefined variable $%s", name)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("variable $%s must be a string, got %s", name, typeName(v))
	}
	return s, nil
}

// varStrings accepts a string or a list of strings.
func varStrings(name string, vars map[string]any) ([]string, error) {
	v, ok := vars[name]
	if !ok {
		return nil, fmt.Errorf("undefined variable $%s", name)
	}
	switch x := v.(type) {
	case string:
		return []string{x}, nil
	case []string:
		return slices.Clone(x), nil
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("variable $%s must be a list of strings, has %s", name, typeName(e))
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("variable $%s must be a string or a list of strings, got %s", name, typeName(v))
}

func varInt(name string, vars map[string]any) (int, error) {
	v, ok := vars[name]
	if !ok {
		return 0, fmt.Errorf("undefined variable $%s", name)
	}
	var f float64
	switch x := v.(type) {
	case int:
		return x, nil
	case int64:
		f = float64(x)
	case float64:
		f = x
	case json.Number:
		n, err := strconv.ParseInt(string(x), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("variable $%s must be an integer, got %s", name, x)
		}
		return int(n), nil
	default:
		return 0, fmt.Errorf("variable $%s must be an integer, got %s", name, typeName(v))
	}
	if f != float64(int32(f)) {
		return 0, fmt.Errorf("variable $%s must be an integer, got %v", name, v)
	}
	return int(f), nil
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64, int, int64, json.Number:
		return "a number"
	case []any, []string:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
