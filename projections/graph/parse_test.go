package graph

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustParse(t testing.TB, src string) Query {
	t.Helper()
	q, err := Parse(src, nil)
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	return q
}

func TestMatchGlob(t *testing.T) {
	cases := []struct {
		pattern, id string
		want        bool
	}{
		{"*", "", true},
		{"*", "svc:a/b", true},
		{"db:*", "db:x", true},
		{"db:*", "db:", true},
		{"db:*", "db:eu/orders", true},
		{"db:*", "svc:db:x", false},
		{"*:x", "db:x", true},
		{"*/orders", "db:eu/orders", true},
		{"*/orders", "db:eu/orders/2", false},
		{"db:?", "db:x", true},
		{"db:?", "db:xy", false},
		{"db:?", "db:", false},
		{"db:?", "db:é", true}, // ? is one character, not one byte
		{"?é?", "aéb", true},
		{"svc:a*b*c", "svc:aXXbYYc", true},
		{"svc:a*b*c", "svc:aXXbYY", false},
		{"a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"**", "x", true},
		{"db:x", "db:x", true},
		{"db:x", "db:xx", false},
		{`db:\*`, "db:*", true},
		{`db:\*`, "db:x", false},
		{`a\?`, "a?", true},
		{`a\\b`, `a\b`, true},
		{`a\`, `a\`, true},
		{"", "", true},
		{"", "a", false},
		{"x*", "→x", false},
		{"*→*", "a→b", true},
	}
	for _, c := range cases {
		if got := MatchGlob(c.pattern, c.id); got != c.want {
			t.Errorf("MatchGlob(%q, %q) = %v, want %v", c.pattern, c.id, got, c.want)
		}
		if got := newGlobMatcher(c.pattern).match(c.id); got != c.want {
			t.Errorf("globMatcher(%q).match(%q) = %v, want %v", c.pattern, c.id, got, c.want)
		}
	}
}

func TestParseValid(t *testing.T) {
	vars := map[string]any{"svc": "svc:A", "rels": []any{"reads", "depends_on"}, "d": json.Number("2"), "dir": "in", "one": "owns"}
	cases := []struct {
		src  string
		want Query
	}{
		{"rel(3hop, 'svc:A'→'db:*')", Query{Op: OpRel, Depth: 3, Start: "svc:A", Pattern: "db:*", Dir: DirOut}},
		{"rel(3hop,'svc:A'->'db:*')", Query{Op: OpRel, Depth: 3, Start: "svc:A", Pattern: "db:*", Dir: DirOut}},
		{"  rel ( 1hops , \"svc:A\" -> \"*\" )  ", Query{Op: OpRel, Depth: 1, Start: "svc:A", Pattern: "*", Dir: DirOut}},
		{"rel(2hop, $svc→'db:*', rel='depends_on', dir='both')", Query{Op: OpRel, Depth: 2, Start: "svc:A", Pattern: "db:*", Rels: []string{"depends_on"}, Dir: DirBoth}},
		{"rel(2hop, $svc→'db:*', rel=['reads','depends_on','reads'])", Query{Op: OpRel, Depth: 2, Start: "svc:A", Pattern: "db:*", Rels: []string{"depends_on", "reads"}, Dir: DirOut}},
		{"rel(2hop, $svc→'db:*', rel=$rels, dir=$dir)", Query{Op: OpRel, Depth: 2, Start: "svc:A", Pattern: "db:*", Rels: []string{"depends_on", "reads"}, Dir: DirIn}},
		{"rel(2hop, $svc→'db:*', rel=[$one, 'x'])", Query{Op: OpRel, Depth: 2, Start: "svc:A", Pattern: "db:*", Rels: []string{"owns", "x"}, Dir: DirOut}},
		{"rel(1hop, 'it\\'s'->'a\\\\b')", Query{Op: OpRel, Depth: 1, Start: "it's", Pattern: `a\b`, Dir: DirOut}},
		{"neighbors('svc:A')", Query{Op: OpNeighbors, Start: "svc:A", Depth: 1, Dir: DirOut}},
		{"neighbors('svc:A', depth=1, rel='depends_on', dir='both')", Query{Op: OpNeighbors, Start: "svc:A", Depth: 1, Rels: []string{"depends_on"}, Dir: DirBoth}},
		{"neighbors($svc, depth=$d)", Query{Op: OpNeighbors, Start: "svc:A", Depth: 2, Dir: DirOut}},
		{"path('user:alice', 'dataset:prod')", Query{Op: OpPath, Start: "user:alice", Target: "dataset:prod", Dir: DirOut}},
		{"path('user:alice', 'dataset:prod', dir='both', depth=4, rel=['member_of'])", Query{Op: OpPath, Start: "user:alice", Target: "dataset:prod", Depth: 4, Rels: []string{"member_of"}, Dir: DirBoth}},
		{"who_can('export', 'dataset:prod')", Query{Op: OpWhoCan, Action: "export", Resource: "dataset:prod"}},
		{"who_can(\n  'export',\n  $svc\n)", Query{Op: OpWhoCan, Action: "export", Resource: "svc:A"}},
	}
	for _, c := range cases {
		q, err := Parse(c.src, vars)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.src, err)
			continue
		}
		if !reflect.DeepEqual(q, c.want) {
			t.Errorf("Parse(%q) = %#v, want %#v", c.src, q, c.want)
		}
		// The canonical form parses back to the same query.
		back, err := Parse(q.String(), nil)
		if err != nil || !reflect.DeepEqual(back, q) {
			t.Errorf("round trip of %q via %q: %#v, %v", c.src, q.String(), back, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	vars := map[string]any{"n": 3, "list": []any{"a"}, "bad": []any{1}, "e": ""}
	cases := []struct {
		src       string
		line, col int
		msg       string
	}{
		{"", 1, 1, "expected a query"},
		{"frob('x')", 1, 1, `unknown query "frob"`},
		{"rel", 1, 4, "expected '('"},
		{"rel(3, 'a'->'b')", 1, 5, "expected a hop count like 3hop"},
		{"rel(3hoops, 'a'->'b')", 1, 5, "expected a hop count"},
		{"rel(0hop, 'a'->'b')", 1, 5, "hop count must be a positive integer"},
		{"rel(3hop 'a'->'b')", 1, 10, "expected ','"},
		{"rel(3hop, a->'b')", 1, 11, "expected start node id"},
		{"rel(3hop, 'a' 'b')", 1, 15, "expected '->' or '→'"},
		{"rel(3hop, 'a'-'b')", 1, 14, "unexpected '-'"},
		{"rel(3hop, 'a'→'b' rel='x')", 1, 19, "expected ',' or ')'"},
		{"rel(3hop, 'a'→'b', depth=2)", 1, 20, `unknown argument "depth" for rel`},
		{"rel(3hop, 'a'→'b', rel='x', rel='y')", 1, 29, `argument "rel" given twice`},
		{"rel(3hop, 'a'→'b', rel=[])", 1, 25, "rel list must not be empty"},
		{"rel(3hop, 'a'→'b', rel=['x' 'y'])", 1, 29, "expected ',' or ']'"},
		{"rel(3hop, 'a'→'b', rel=[1])", 1, 25, "expected a relation type"},
		{"rel(3hop, 'a'→'b', rel='')", 1, 24, "relation type must not be empty"},
		{"rel(3hop, 'a'→'b', dir='up')", 1, 24, "dir must be 'out', 'in' or 'both'"},
		{"rel(3hop, 'a'→'b', dir=out)", 1, 24, "expected 'out', 'in' or 'both'"},
		{"rel(3hop, 'a'→'b'))", 1, 19, "unexpected ')' after the query"},
		{"rel(3hop, 'a'→'b)", 1, 15, "unterminated string"},
		{"rel(3hop, $nope→'b')", 1, 11, "undefined variable $nope"},
		{"rel(3hop, $n→'b')", 1, 11, "variable $n must be a string, got a number"},
		{"rel(3hop, 'a'→'b', rel=$bad)", 1, 24, "must be a list of strings"},
		{"rel(3hop, $ →'b')", 1, 11, "expected a variable name"},
		{"neighbors('a', depth=0)", 1, 22, "depth must be at least 1"},
		{"neighbors('a', depth='1')", 1, 22, "expected depth (an integer or $variable)"},
		{"neighbors('a', depth=$list)", 1, 22, "must be an integer"},
		{"neighbors('a',, depth=1)", 1, 15, "expected a named argument (depth, rel, dir)"},
		{"path('a')", 1, 9, "expected ','"},
		{"path('','')", 1, 6, "expected start node id, got an empty string"},
		{"who_can('x', $e)", 1, 14, "expected resource id, got an empty string"},
		{"who_can('export', 'x', rel='a')", 1, 24, "who_can takes no named arguments"},
		{"who_can('export' 'x')", 1, 18, "expected ','"},
		{"who_can('export', 'x'", 1, 22, "expected ')', got end of query"},
		{"who_can(\n'export',\n  'x' 'y')", 3, 7, "expected ')'"},
		{"rel(3hop, 'a'→'b') #", 1, 20, "unexpected character '#'"},
	}
	for _, c := range cases {
		_, err := Parse(c.src, vars)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%q): error %v is not a *ParseError", c.src, err)
			continue
		}
		if pe.Line != c.line || pe.Pos != c.col || !strings.Contains(pe.Msg, c.msg) {
			t.Errorf("Parse(%q) = %d:%d %q, want %d:%d containing %q", c.src, pe.Line, pe.Pos, pe.Msg, c.line, c.col, c.msg)
		}
	}
	// The message format is line:column: text.
	_, err := Parse("rel(3hop, 'a'→'b' x)", nil)
	if got := err.Error(); got != `1:19: expected ',' or ')', got "x"` {
		t.Errorf("message = %q", got)
	}
}

func TestStructuredQuery(t *testing.T) {
	vars := map[string]any{"svc": "svc:A", "rels": []string{"reads"}}
	cases := []struct {
		json string
		text string
	}{
		{`{"op":"rel","hops":3,"start":"svc:A","pattern":"db:*"}`, "rel(3hop, 'svc:A'→'db:*')"},
		{`{"op":"rel","depth":2,"start":"$svc","pattern":"db:*","rel":["depends_on","$rels"],"dir":"both"}`, "rel(2hop, $svc→'db:*', rel=['depends_on', 'reads'], dir='both')"},
		{`{"op":"neighbors","start":"svc:A"}`, "neighbors('svc:A')"},
		{`{"op":"neighbors","start":"svc:A","depth":1,"rel":["depends_on"],"dir":"both"}`, "neighbors('svc:A', depth=1, rel='depends_on', dir='both')"},
		{`{"op":"path","start":"user:alice","target":"dataset:prod","depth":3}`, "path('user:alice', 'dataset:prod', depth=3)"},
		{`{"op":"who_can","action":"export","resource":"dataset:prod"}`, "who_can('export', 'dataset:prod')"},
	}
	for _, c := range cases {
		got, err := ParseJSON([]byte(c.json), vars)
		if err != nil {
			t.Errorf("ParseJSON(%s): %v", c.json, err)
			continue
		}
		want, err := Parse(c.text, vars)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ParseJSON(%s) = %#v, want %#v (from %s)", c.json, got, want, c.text)
		}
	}
	bad := []struct{ json, msg string }{
		{`{"op":"rel","start":"a","pattern":"b"}`, "hops must be at least 1"},
		{`{"op":"rel","hops":2,"depth":3,"start":"a","pattern":"b"}`, "not both"},
		{`{"op":"rel","hops":2,"pattern":"b"}`, "start is required"},
		{`{"op":"path","start":"a"}`, "target is required"},
		{`{"op":"who_can","action":"x","resource":"y","dir":"out"}`, "who_can takes no"},
		{`{"op":"neighbors","start":"a","hops":1}`, "hops applies only to rel"},
		{`{"op":"neighbors","start":"a","dir":"up"}`, "dir must be"},
		{`{"op":"neighbors","start":"$nope"}`, "start: undefined variable $nope"},
		{`{"op":"bogus"}`, `unknown op "bogus"`},
		{`{"op":"neighbors","start":"a","extra":1}`, "unknown field"},
		{`{"op":"neighbors","start":"a"} {}`, "trailing data"},
		{`{}`, "op is required"},
	}
	for _, c := range bad {
		_, err := ParseJSON([]byte(c.json), vars)
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Pos != 0 || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseJSON(%s) = %v, want a *ParseError containing %q", c.json, err, c.msg)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"rel(3hop, 'svc:A'→'db:*')", "neighbors('svc:A', depth=1, rel=['a','b'], dir='both')",
		"path('a', 'b', depth=2)", "who_can('export', $r)", "rel(2hop, $svc -> \"x\\\"y\")", "",
	} {
		f.Add(s)
	}
	vars := map[string]any{"r": "dataset:x", "svc": "svc:A"}
	f.Fuzz(func(t *testing.T, src string) {
		q, err := Parse(src, vars)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Pos < 1 || pe.Line < 1 {
				t.Fatalf("Parse(%q): %v is not a positioned *ParseError", src, err)
			}
			return
		}
		back, err := Parse(q.String(), nil)
		if err != nil || !reflect.DeepEqual(back, q) {
			t.Fatalf("round trip of %q via %q: %#v, %v", src, q.String(), back, err)
		}
	})
}
