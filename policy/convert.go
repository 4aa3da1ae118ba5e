package policy

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Keys of the Rego input document, built once. They must match the JSON
// tags of Input, Principal and Resource (TestInputValueMatchesJSON checks).
var (
	keyAction    = ast.StringTerm("action")
	keyTenant    = ast.StringTerm("tenant")
	keyPrincipal = ast.StringTerm("principal")
	keyResource  = ast.StringTerm("resource")
	keyTarget    = ast.StringTerm("target")
	keyRelation  = ast.StringTerm("relation")
	keyID        = ast.StringTerm("id")
	keyKind      = ast.StringTerm("kind")
	keyRoles     = ast.StringTerm("roles")
	keyAttrs     = ast.StringTerm("attrs")
	keyMFA       = ast.StringTerm("mfa")
	keyMFAAge    = ast.StringTerm("mfa_age_seconds")
	keyContext   = ast.StringTerm("context")
	keyExists    = ast.StringTerm("exists")
)

// inputValue builds the Rego input document directly as an AST value.
// Going through ast.InterfaceToValue(in) would JSON round-trip the struct,
// which costs more than the policy evaluation itself.
func inputValue(in *Input) (ast.Value, error) {
	principal, err := principalValue(&in.Principal)
	if err != nil {
		return nil, fmt.Errorf("principal: %w", err)
	}
	resource, err := resourceValue(&in.Resource)
	if err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	obj := ast.NewObjectWithCapacity(6)
	obj.Insert(keyAction, ast.StringTerm(in.Action))
	obj.Insert(keyTenant, ast.StringTerm(in.Tenant))
	obj.Insert(keyPrincipal, ast.NewTerm(principal))
	obj.Insert(keyResource, ast.NewTerm(resource))
	if in.Target != nil {
		target, err := resourceValue(in.Target)
		if err != nil {
			return nil, fmt.Errorf("target: %w", err)
		}
		obj.Insert(keyTarget, ast.NewTerm(target))
	}
	if in.Relation != "" {
		obj.Insert(keyRelation, ast.StringTerm(in.Relation))
	}
	if len(in.Context) > 0 {
		c, err := ast.InterfaceToValue(in.Context)
		if err != nil {
			return nil, fmt.Errorf("context: %w", err)
		}
		obj.Insert(keyContext, ast.NewTerm(c))
	}
	return obj, nil
}

func principalValue(p *Principal) (ast.Value, error) {
	attrs, err := attrsValue(p.Attrs)
	if err != nil {
		return nil, err
	}
	roles := make([]*ast.Term, len(p.Roles))
	for i, r := range p.Roles {
		roles[i] = ast.StringTerm(r)
	}
	obj := ast.NewObjectWithCapacity(6)
	obj.Insert(keyID, ast.StringTerm(p.ID))
	if p.Kind != "" {
		obj.Insert(keyKind, ast.StringTerm(p.Kind))
	}
	obj.Insert(keyRoles, ast.NewTerm(ast.NewArray(roles...)))
	obj.Insert(keyAttrs, ast.NewTerm(attrs))
	obj.Insert(keyMFA, ast.InternedTerm(p.MFA))
	obj.Insert(keyMFAAge, ast.InternedTerm(int(p.MFAAgeSeconds)))
	obj.Insert(keyExists, ast.InternedTerm(p.Exists))
	return obj, nil
}

func resourceValue(r *Resource) (ast.Value, error) {
	attrs, err := attrsValue(r.Attrs)
	if err != nil {
		return nil, err
	}
	obj := ast.NewObjectWithCapacity(4)
	obj.Insert(keyID, ast.StringTerm(r.ID))
	if r.Kind != "" {
		obj.Insert(keyKind, ast.StringTerm(r.Kind))
	}
	obj.Insert(keyAttrs, ast.NewTerm(attrs))
	obj.Insert(keyExists, ast.InternedTerm(r.Exists))
	return obj, nil
}

func attrsValue(attrs map[string]any) (ast.Value, error) {
	if len(attrs) == 0 {
		return ast.NewObject(), nil
	}
	v, err := ast.InterfaceToValue(attrs)
	if err != nil {
		return nil, fmt.Errorf("attrs: %w", err)
	}
	return v, nil
}

// Keys of the decision object.
var (
	keyAllow       = ast.StringTerm("allow")
	keyReasons     = ast.StringTerm("reasons")
	keyObligations = ast.StringTerm("obligations")
	keyRule        = ast.StringTerm("rule")
	keyResult      = ast.StringTerm("result")
	keyMessage     = ast.StringTerm("message")
	keyAttributes  = ast.StringTerm("attributes")
	keyType        = ast.StringTerm("type")
	keyParams      = ast.StringTerm("params")
)

// parseDecision checks and converts the policy's decision object, read
// straight from the AST (no intermediate map[string]any). Anything
// unexpected is an error, which Decide turns into a deny.
func parseDecision(v ast.Value) (Decision, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return Decision{}, fmt.Errorf("want an object, got %s", valueName(v))
	}
	allow, ok := get(obj, keyAllow).(ast.Boolean)
	if !ok {
		return Decision{}, fmt.Errorf(`"allow" must be a boolean, got %s`, valueName(get(obj, keyAllow)))
	}
	rawReasons, ok := elements(get(obj, keyReasons))
	if !ok {
		return Decision{}, fmt.Errorf(`"reasons" must be an array or set, got %s`, valueName(get(obj, keyReasons)))
	}
	d := Decision{
		Allow:       bool(allow),
		Rationale:   make([]Reason, 0, len(rawReasons)),
		Obligations: []Obligation{},
	}
	granted := false
	for i, raw := range rawReasons {
		r, err := parseReason(raw.Value)
		if err != nil {
			return Decision{}, fmt.Errorf("reasons[%d]: %w", i, err)
		}
		granted = granted || r.Result
		d.Rationale = append(d.Rationale, r)
	}
	if d.Allow && !granted {
		return Decision{}, errors.New(`"allow" is true but no reason has "result": true`)
	}
	if raw := get(obj, keyObligations); raw != nil && raw != ast.NullValue {
		list, ok := elements(raw)
		if !ok {
			return Decision{}, fmt.Errorf(`"obligations" must be an array or set, got %s`, valueName(raw))
		}
		for i, raw := range list {
			o, err := parseObligation(raw.Value)
			if err != nil {
				return Decision{}, fmt.Errorf("obligations[%d]: %w", i, err)
			}
			d.Obligations = append(d.Obligations, o)
		}
	}
	slices.SortFunc(d.Rationale, compareReasons)
	slices.SortFunc(d.Obligations, compareObligations)
	return d, nil
}

func parseReason(v ast.Value) (Reason, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return Reason{}, fmt.Errorf("want an object, got %s", valueName(v))
	}
	rule, ok := get(obj, keyRule).(ast.String)
	if !ok || rule == "" {
		return Reason{}, fmt.Errorf(`"rule" must be a non-empty string, got %s`, valueName(get(obj, keyRule)))
	}
	result, ok := get(obj, keyResult).(ast.Boolean)
	if !ok {
		return Reason{}, fmt.Errorf(`"result" must be a boolean, got %s`, valueName(get(obj, keyResult)))
	}
	r := Reason{Rule: string(rule), Result: bool(result)}
	if m := get(obj, keyMessage); m != nil {
		msg, ok := m.(ast.String)
		if !ok {
			return Reason{}, fmt.Errorf(`"message" must be a string, got %s`, valueName(m))
		}
		r.Message = string(msg)
	}
	var err error
	if r.Attributes, err = optionalObject(get(obj, keyAttributes)); err != nil {
		return Reason{}, fmt.Errorf(`"attributes": %w`, err)
	}
	return r, nil
}

func parseObligation(v ast.Value) (Obligation, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return Obligation{}, fmt.Errorf("want an object, got %s", valueName(v))
	}
	typ, ok := get(obj, keyType).(ast.String)
	if !ok || typ == "" {
		return Obligation{}, fmt.Errorf(`"type" must be a non-empty string, got %s`, valueName(get(obj, keyType)))
	}
	o := Obligation{Type: string(typ)}
	var err error
	if o.Params, err = optionalObject(get(obj, keyParams)); err != nil {
		return Obligation{}, fmt.Errorf(`"params": %w`, err)
	}
	return o, nil
}

// optionalObject converts an absent or null value to nil and an object to
// its JSON form (numbers become json.Number, sets become arrays).
func optionalObject(v ast.Value) (map[string]any, error) {
	if v == nil || v == ast.NullValue {
		return nil, nil
	}
	if _, ok := v.(ast.Object); !ok {
		return nil, fmt.Errorf("must be an object, got %s", valueName(v))
	}
	j, err := ast.JSON(v)
	if err != nil {
		return nil, err
	}
	m, _ := j.(map[string]any)
	return m, nil
}

func get(obj ast.Object, key *ast.Term) ast.Value {
	if t := obj.Get(key); t != nil {
		return t.Value
	}
	return nil
}

// elements lists the members of an array or a set (sets in sorted order).
func elements(v ast.Value) ([]*ast.Term, bool) {
	switch x := v.(type) {
	case *ast.Array:
		out := make([]*ast.Term, 0, x.Len())
		x.Foreach(func(t *ast.Term) { out = append(out, t) })
		return out, true
	case ast.Set:
		return x.Slice(), true
	default:
		return nil, false
	}
}

func valueName(v ast.Value) string {
	if v == nil {
		return "undefined"
	}
	return ast.ValueName(v)
}

// compareReasons orders by rule, then message, then result, then the JSON of
// the attributes, so equal inputs always give byte-identical rationales.
func compareReasons(a, b Reason) int {
	if c := cmp.Compare(a.Rule, b.Rule); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Message, b.Message); c != 0 {
		return c
	}
	if a.Result != b.Result {
		if !a.Result {
			return -1
		}
		return 1
	}
	return compareJSON(a.Attributes, b.Attributes)
}

func compareObligations(a, b Obligation) int {
	if c := cmp.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	return compareJSON(a.Params, b.Params)
}

func compareJSON(a, b map[string]any) int {
	if len(a) == 0 && len(b) == 0 {
		return 0
	}
	// Values came from ast.JSON, so they always marshal.
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Compare(ja, jb)
}
