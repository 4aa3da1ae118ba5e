package graph

import (
	"strings"
	"unicode/utf8"
)

// MatchGlob reports whether id matches pattern. Unlike path.Match, no
// character is a separator: ids look like "svc:billing/api", and "db:*"
// must match "db:eu/orders".
//
//	'*'   any sequence of characters, including none
//	'?'   exactly one character (rune)
//	'\c'  the character c literally (\*, \?, \\)
//
// Everything else matches itself; there are no character classes.
func MatchGlob(pattern, id string) bool {
	px, nx := 0, 0
	// Position to resume from when the last '*' must absorb one more rune.
	starPx, starNx := -1, -1
	for px < len(pattern) || nx < len(id) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starPx, starNx = px, nx
				px++
				continue
			case '?':
				if nx < len(id) {
					_, w := utf8.DecodeRuneInString(id[nx:])
					px++
					nx += w
					continue
				}
			case '\\':
				lit, w := byte('\\'), 1 // a trailing backslash is literal
				if px+1 < len(pattern) {
					lit, w = pattern[px+1], 2
				}
				if nx < len(id) && id[nx] == lit {
					px += w
					nx++
					continue
				}
			default:
				if nx < len(id) && id[nx] == c {
					px++
					nx++
					continue
				}
			}
		}
		if starPx >= 0 && starNx < len(id) {
			_, w := utf8.DecodeRuneInString(id[starNx:])
			starNx += w
			px, nx = starPx+1, starNx
			continue
		}
		return false
	}
	return true
}

// globMatcher picks a fast path for the common pattern shapes.
type globMatcher struct {
	pattern string
	kind    int // 0 any, 1 exact, 2 prefix, 3 general
	lit     string
}

func newGlobMatcher(pattern string) globMatcher {
	m := globMatcher{pattern: pattern, kind: 3}
	switch {
	case pattern == "*":
		m.kind = 0
	case !strings.ContainsAny(pattern, `*?\`):
		m.kind, m.lit = 1, pattern
	case strings.HasSuffix(pattern, "*") && !strings.ContainsAny(pattern[:len(pattern)-1], `*?\`):
		m.kind, m.lit = 2, pattern[:len(pattern)-1]
	}
	return m
}

func (m globMatcher) match(id string) bool {
	switch m.kind {
	case 0:
		return true
	case 1:
		return id == m.lit
	case 2:
		return strings.HasPrefix(id, m.lit)
	}
	return MatchGlob(m.pattern, id)
}
