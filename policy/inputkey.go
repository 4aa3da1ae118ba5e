package policy

import (
	"encoding/json"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// inputPaths lists the input paths the bundle's policy reads: every ref
// rooted at `input`, cut at its first non-constant term. A decision is a
// deterministic function of the values at those paths (the bundle is
// compiled without time or randomness built-ins), which is what makes
// DecisionKey sound. A bare `input` (or a ref with a non-string key) makes
// the whole prefix relevant, so the key degrades gracefully to "everything".
func inputPaths(c *ast.Compiler) [][]string {
	seen := map[string][]string{}
	for name, m := range c.Modules {
		if strings.HasSuffix(name, "_test.rego") {
			continue
		}
		ast.WalkRefs(m, func(r ast.Ref) bool {
			if len(r) == 0 || !r[0].Equal(ast.InputRootDocument) {
				return false
			}
			path := []string{}
			for _, t := range r[1:] {
				s, ok := t.Value.(ast.String)
				if !ok {
					break
				}
				path = append(path, string(s))
			}
			seen[strings.Join(path, "\x00")] = path
			return false
		})
	}
	// Keep only maximal-prefix paths: a read of input.principal makes
	// input.principal.roles redundant.
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out [][]string
	for _, k := range keys {
		p := seen[k]
		covered := false
		for _, q := range out {
			if len(q) <= len(p) && strings.Join(p[:len(q)], "\x00") == strings.Join(q, "\x00") {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}

// DecisionKey returns a string that is equal for two inputs exactly when
// every input value the policy reads is equal, so decisions may be memoised
// by it (who_can asks the same policy about thousands of principals). ok is
// false when the input cannot be encoded.
func (e *Engine) DecisionKey(in Input) (key string, ok bool) {
	var b strings.Builder
	var doc any // the generic form, built only when a path needs it
	for _, p := range e.inputPaths {
		v, fast := fastLookup(&in, p)
		if !fast {
			if doc == nil {
				raw, err := json.Marshal(in)
				if err != nil {
					return "", false
				}
				if err := json.Unmarshal(raw, &doc); err != nil {
					return "", false
				}
			}
			v = lookup(doc, p)
		}
		enc, err := json.Marshal(v) // maps marshal with sorted keys
		if err != nil {
			return "", false
		}
		b.Write(enc)
		b.WriteByte(0)
	}
	return b.String(), true
}

// fastLookup reads the common paths straight from the struct.
func fastLookup(in *Input, p []string) (any, bool) {
	if len(p) == 0 {
		return nil, false
	}
	switch p[0] {
	case "action":
		return in.Action, len(p) == 1
	case "tenant":
		return in.Tenant, len(p) == 1
	case "relation":
		return in.Relation, len(p) == 1
	case "principal":
		if len(p) == 2 {
			switch p[1] {
			case "id":
				return in.Principal.ID, true
			case "roles":
				return in.Principal.Roles, true
			case "mfa":
				return in.Principal.MFA, true
			case "exists":
				return in.Principal.Exists, true
			case "kind":
				return in.Principal.Kind, true
			}
		}
		if len(p) == 3 && p[1] == "attrs" {
			if v, ok := in.Principal.Attrs[p[2]]; ok {
				return v, true
			}
			return "\x00undefined", true
		}
	case "resource":
		if len(p) == 2 {
			switch p[1] {
			case "id":
				return in.Resource.ID, true
			case "exists":
				return in.Resource.Exists, true
			case "kind":
				return in.Resource.Kind, true
			}
		}
		if len(p) == 3 && p[1] == "attrs" {
			if v, ok := in.Resource.Attrs[p[2]]; ok {
				return v, true
			}
			return "\x00undefined", true
		}
	}
	return nil, false
}

func lookup(doc any, path []string) any {
	cur := doc
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[k]; !ok {
			return "\x00undefined"
		}
	}
	return cur
}
