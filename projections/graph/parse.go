package graph

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ParseError is a malformed query. For query text, Line and Pos (the
// column, in characters) are 1-based and point at the offending token; for
// a structured query both are 0 and Msg names the field.
type ParseError struct {
	Line int
	Pos  int
	Msg  string
}

func (e *ParseError) Error() string {
	if e.Pos == 0 {
		return "graph query: " + e.Msg
	}
	line := e.Line
	if line == 0 {
		line = 1
	}
	return fmt.Sprintf("%d:%d: %s", line, e.Pos, e.Msg)
}

// Parse parses query text (grammar: schemas/graph-query.ebnf) and
// substitutes $variables from vars: a string where an id, pattern, action
// or dir is expected, a string or list of strings for rel=, an integer for
// depth=. Every error is a *ParseError.
func Parse(src string, vars map[string]any) (Query, error) {
	p := &parser{lx: lexer{src: src, line: 1, col: 1}, vars: vars}
	q, err := p.query()
	if err != nil {
		return Query{}, err
	}
	q = q.normalize()
	if err := q.Validate(); err != nil { // unreachable for parsed text, kept as a guard
		return Query{}, err
	}
	return q, nil
}

// --- Lexer ---------------------------------------------------------------

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tVar
	tInt
	tHops // "3hop" / "3hops"
	tArrow
	tLParen
	tRParen
	tComma
	tEq
	tLBrack
	tRBrack
)

type token struct {
	kind      tokKind
	text      string // identifier, variable name, unquoted string, digits
	line, col int
}

func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of query"
	case tString:
		return "string " + quote(t.text)
	case tVar:
		return "$" + t.text
	case tIdent, tInt, tHops:
		return strconv.Quote(t.text)
	case tArrow:
		return "'->'"
	}
	return "'" + t.text + "'"
}

type lexer struct {
	src       string
	off       int
	line, col int
}

func (l *lexer) peekRune() (rune, int) {
	if l.off >= len(l.src) {
		return -1, 0
	}
	return utf8.DecodeRuneInString(l.src[l.off:])
}

func (l *lexer) advance() rune {
	r, w := l.peekRune()
	l.off += w
	if r == '\n' {
		l.line++
		l.col = 1
	} else {
		l.col++
	}
	return r
}

func (l *lexer) errAt(line, col int, format string, args ...any) *ParseError {
	return &ParseError{Line: line, Pos: col, Msg: fmt.Sprintf(format, args...)}
}

func isIdentStart(r rune) bool { return r == '_' || unicode.IsLetter(r) }
func isIdentPart(r rune) bool  { return isIdentStart(r) || unicode.IsDigit(r) }

func (l *lexer) next() (token, error) {
	for {
		r, _ := l.peekRune()
		if r == -1 || !unicode.IsSpace(r) {
			break
		}
		l.advance()
	}
	t := token{line: l.line, col: l.col}
	r, _ := l.peekRune()
	switch {
	case r == -1:
		t.kind = tEOF
		return t, nil
	case r == '(' || r == ')' || r == ',' || r == '=' || r == '[' || r == ']':
		l.advance()
		t.text = string(r)
		t.kind = map[rune]tokKind{'(': tLParen, ')': tRParen, ',': tComma, '=': tEq, '[': tLBrack, ']': tRBrack}[r]
		return t, nil
	case r == '→':
		l.advance()
		t.kind, t.text = tArrow, "→"
		return t, nil
	case r == '-':
		l.advance()
		if r2, _ := l.peekRune(); r2 == '>' {
			l.advance()
			t.kind, t.text = tArrow, "->"
			return t, nil
		}
		return t, l.errAt(t.line, t.col, "unexpected '-' (did you mean '->'?)")
	case r == '\'' || r == '"':
		return l.str(t, r)
	case r == '$':
		l.advance()
		start := l.off
		if r2, _ := l.peekRune(); !isIdentStart(r2) {
			return t, l.errAt(t.line, t.col, "expected a variable name after '$'")
		}
		for r2, _ := l.peekRune(); r2 != -1 && isIdentPart(r2); r2, _ = l.peekRune() {
			l.advance()
		}
		t.kind, t.text = tVar, l.src[start:l.off]
		return t, nil
	case r >= '0' && r <= '9':
		start := l.off
		for r2, _ := l.peekRune(); r2 >= '0' && r2 <= '9'; r2, _ = l.peekRune() {
			l.advance()
		}
		t.kind = tInt
		if r2, _ := l.peekRune(); isIdentStart(r2) {
			for r2, _ := l.peekRune(); r2 != -1 && isIdentPart(r2); r2, _ = l.peekRune() {
				l.advance()
			}
			t.kind = tHops
		}
		t.text = l.src[start:l.off]
		return t, nil
	case isIdentStart(r):
		start := l.off
		for r2, _ := l.peekRune(); r2 != -1 && isIdentPart(r2); r2, _ = l.peekRune() {
			l.advance()
		}
		t.kind, t.text = tIdent, l.src[start:l.off]
		return t, nil
	}
	return t, l.errAt(t.line, t.col, "unexpected character %q", r)
}

// str lexes a quoted string; \ escapes the next character.
func (l *lexer) str(t token, q rune) (token, error) {
	l.advance()
	var b strings.Builder
	for {
		r, _ := l.peekRune()
		switch r {
		case -1, '\n':
			return t, l.errAt(t.line, t.col, "unterminated string")
		case q:
			l.advance()
			t.kind, t.text = tString, b.String()
			return t, nil
		case '\\':
			l.advance()
			r2, _ := l.peekRune()
			if r2 == -1 {
				return t, l.errAt(t.line, t.col, "unterminated string")
			}
			b.WriteRune(l.advance())
		default:
			b.WriteRune(l.advance())
		}
	}
}

// --- Parser --------------------------------------------------------------

type parser struct {
	lx     lexer
	tok    token
	peeked bool
	vars   map[string]any
}

func (p *parser) peek() (token, error) {
	if !p.peeked {
		t, err := p.lx.next()
		if err != nil {
			return t, err
		}
		p.tok, p.peeked = t, true
	}
	return p.tok, nil
}

func (p *parser) take() (token, error) {
	t, err := p.peek()
	p.peeked = false
	return t, err
}

func errAt(t token, format string, args ...any) *ParseError {
	return &ParseError{Line: t.line, Pos: t.col, Msg: fmt.Sprintf(format, args...)}
}

// expect takes a token of kind k; what describes it in the error.
func (p *parser) expect(k tokKind, what string) (token, error) {
	t, err := p.take()
	if err != nil {
		return t, err
	}
	if t.kind != k {
		return t, errAt(t, "expected %s, got %s", what, t.describe())
	}
	return t, nil
}

// namedArgs lists the named arguments each form accepts.
var namedArgs = map[Op][]string{
	OpRel:       {"rel", "dir"},
	OpNeighbors: {"depth", "rel", "dir"},
	OpPath:      {"depth", "rel", "dir"},
}

func (p *parser) query() (Query, error) {
	head, err := p.take()
	if err != nil {
		return Query{}, err
	}
	if head.kind != tIdent {
		return Query{}, errAt(head, "expected a query (rel, neighbors, path or who_can), got %s", head.describe())
	}
	q := Query{Op: Op(head.text)}
	switch q.Op {
	case OpRel, OpNeighbors, OpPath, OpWhoCan:
	default:
		return Query{}, errAt(head, "unknown query %q (want rel, neighbors, path or who_can)", head.text)
	}
	if _, err := p.expect(tLParen, "'('"); err != nil {
		return Query{}, err
	}
	switch q.Op {
	case OpRel:
		t, err := p.take()
		if err != nil {
			return Query{}, err
		}
		if q.Depth, err = hops(t); err != nil {
			return Query{}, err
		}
		if _, err := p.expect(tComma, "','"); err != nil {
			return Query{}, err
		}
		if q.Start, err = p.value("start node id"); err != nil {
			return Query{}, err
		}
		if _, err := p.expect(tArrow, "'->' or '→'"); err != nil {
			return Query{}, err
		}
		if q.Pattern, err = p.value("id pattern"); err != nil {
			return Query{}, err
		}
	case OpNeighbors:
		if q.Start, err = p.value("start node id"); err != nil {
			return Query{}, err
		}
	case OpPath:
		if q.Start, err = p.value("start node id"); err != nil {
			return Query{}, err
		}
		if _, err := p.expect(tComma, "','"); err != nil {
			return Query{}, err
		}
		if q.Target, err = p.value("target node id"); err != nil {
			return Query{}, err
		}
	case OpWhoCan:
		if q.Action, err = p.value("action"); err != nil {
			return Query{}, err
		}
		if _, err := p.expect(tComma, "','"); err != nil {
			return Query{}, err
		}
		if q.Resource, err = p.value("resource id"); err != nil {
			return Query{}, err
		}
	}
	if err := p.named(&q); err != nil {
		return Query{}, err
	}
	t, err := p.take()
	if err != nil {
		return Query{}, err
	}
	if t.kind != tEOF {
		return Query{}, errAt(t, "unexpected %s after the query", t.describe())
	}
	return q, nil
}

func hops(t token) (int, error) {
	digits := strings.TrimRight(t.text, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
	suffix := t.text[len(digits):]
	if t.kind != tHops || (suffix != "hop" && suffix != "hops") || digits == "" {
		return 0, errAt(t, "expected a hop count like 3hop, got %s", t.describe())
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || n > 1<<20 {
		return 0, errAt(t, "hop count must be a positive integer, got %s", digits)
	}
	return n, nil
}

// named parses { "," name "=" arg } ")".
func (p *parser) named(q *Query) error {
	seen := map[string]bool{}
	allowed := namedArgs[q.Op]
	for {
		t, err := p.take()
		if err != nil {
			return err
		}
		switch {
		case t.kind == tRParen:
			return nil
		case t.kind != tComma && len(allowed) == 0:
			return errAt(t, "expected ')', got %s", t.describe())
		case t.kind != tComma:
			return errAt(t, "expected ',' or ')', got %s", t.describe())
		}
		name, err := p.take()
		if err != nil {
			return err
		}
		if name.kind != tIdent {
			if len(allowed) == 0 {
				return errAt(name, "%s takes no named arguments", q.Op)
			}
			return errAt(name, "expected a named argument (%s), got %s", strings.Join(allowed, ", "), name.describe())
		}
		if !containsStr(allowed, name.text) {
			if len(allowed) == 0 {
				return errAt(name, "%s takes no named arguments", q.Op)
			}
			return errAt(name, "unknown argument %q for %s (want %s)", name.text, q.Op, strings.Join(allowed, ", "))
		}
		if seen[name.text] {
			return errAt(name, "argument %q given twice", name.text)
		}
		seen[name.text] = true
		if _, err := p.expect(tEq, "'='"); err != nil {
			return err
		}
		switch name.text {
		case "rel":
			if q.Rels, err = p.rels(); err != nil {
				return err
			}
		case "dir":
			at, _ := p.peek()
			d, err := p.value("'out', 'in' or 'both'")
			if err != nil {
				return err
			}
			switch Dir(d) {
			case DirOut, DirIn, DirBoth:
				q.Dir = Dir(d)
			default:
				return errAt(at, "dir must be 'out', 'in' or 'both', got %s", quote(d))
			}
		case "depth":
			if q.Depth, err = p.int("depth"); err != nil {
				return err
			}
		}
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// value parses a non-empty string literal or a $variable holding one.
func (p *parser) value(what string) (string, error) {
	t, err := p.take()
	if err != nil {
		return "", err
	}
	var s string
	switch t.kind {
	case tString:
		s = t.text
	case tVar:
		if s, err = varString(t.text, p.vars); err != nil {
			return "", errAt(t, "%s", err.Error())
		}
	default:
		return "", errAt(t, "expected %s (a quoted string or $variable), got %s", what, t.describe())
	}
	if s == "" {
		return "", errAt(t, "expected %s, got an empty string", what)
	}
	return s, nil
}

// rels parses a string, a [list] of strings, or a $variable holding either.
func (p *parser) rels() ([]string, error) {
	t, err := p.take()
	if err != nil {
		return nil, err
	}
	var out []string
	switch t.kind {
	case tString:
		out = []string{t.text}
	case tVar:
		if out, err = varStrings(t.text, p.vars); err != nil {
			return nil, errAt(t, "%s", err.Error())
		}
	case tLBrack:
		for {
			v, err := p.take()
			if err != nil {
				return nil, err
			}
			if v.kind == tRBrack && len(out) == 0 {
				return nil, errAt(v, "rel list must not be empty")
			}
			switch v.kind {
			case tString:
				out = append(out, v.text)
			case tVar:
				list, err := varStrings(v.text, p.vars)
				if err != nil {
					return nil, errAt(v, "%s", err.Error())
				}
				out = append(out, list...)
			default:
				return nil, errAt(v, "expected a relation type (a quoted string or $variable), got %s", v.describe())
			}
			sep, err := p.take()
			if err != nil {
				return nil, err
			}
			if sep.kind == tRBrack {
				break
			}
			if sep.kind != tComma {
				return nil, errAt(sep, "expected ',' or ']', got %s", sep.describe())
			}
		}
	default:
		return nil, errAt(t, "expected a relation type or a [list] of them, got %s", t.describe())
	}
	if len(out) == 0 {
		return nil, errAt(t, "rel list must not be empty")
	}
	for _, r := range out {
		if r == "" {
			return nil, errAt(t, "relation type must not be empty")
		}
	}
	return out, nil
}

// int parses a positive integer literal or a $variable holding one.
func (p *parser) int(what string) (int, error) {
	t, err := p.take()
	if err != nil {
		return 0, err
	}
	var n int
	switch t.kind {
	case tInt:
		n, err = strconv.Atoi(t.text)
		if err != nil || n > 1<<20 {
			return 0, errAt(t, "%s is too large: %s", what, t.text)
		}
	case tVar:
		if n, err = varInt(t.text, p.vars); err != nil {
			return 0, errAt(t, "%s", err.Error())
		}
	default:
		return 0, errAt(t, "expected %s (an integer or $variable), got %s", what, t.describe())
	}
	if n < 1 {
		return 0, errAt(t, "%s must be at least 1, got %d", what, n)
	}
	return n, nil
}
