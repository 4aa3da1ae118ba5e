// Package commands owns the write path: command types and their validation,
// the pure decide step (state + command + policy decision → receipt or
// rejection), the processor that is the single writer of each tenant's
// receipts, and the HTTP command API.
//
// It must not read projections; everything it needs to decide lives in the
// tenant state it rebuilds from companyos.events.v1.
package commands

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/internal/httpx"
)

// Command types.
const (
	TypeEntityCreate   = "entity.create"
	TypeEntityUpdate   = "entity.update"
	TypeEntityDelete   = "entity.delete"
	TypeRelationLink   = "relation.link"
	TypeRelationUnlink = "relation.unlink"
	TypePricingSet     = "pricing.set"
	TypeApprovalGrant  = "approval.grant"
	TypePolicyPublish  = "policy.bundle.publish"
)

// Types lists every command type the processor accepts. Every one is
// privileged: policy gates it (policy coverage checks that).
var Types = []string{TypeEntityCreate, TypeEntityUpdate, TypeEntityDelete, TypeRelationLink, TypeRelationUnlink,
	TypePricingSet, TypeApprovalGrant, TypePolicyPublish}

// Limits on command input. Bodies larger than MaxBodyBytes are refused by the
// HTTP layer before decoding.
const (
	MaxBodyBytes = 64 << 10
	// MaxBundleBodyBytes bounds a policy.bundle.publish body (a whole
	// bundle); every other command is held to MaxBodyBytes.
	MaxBundleBodyBytes = 1 << 20
	MaxAttrs           = 64
	MaxAttrsBytes      = 16 << 10
	MaxIDLen           = 256
	MaxAttrListLen     = 64
	MaxStringLen       = 1024
)

var (
	tenantRe   = auth.TenantPattern
	entityIDRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._\-/@*]+$`)
	kindRe     = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	relRe      = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	attrKeyRe  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// Command is the body of POST /v1/commands.
type Command struct {
	Tenant          string          `json:"tenant"`
	Type            string          `json:"type"`
	ExpectedVersion *uint64         `json:"expected_version,omitempty"`
	Payload         json.RawMessage `json:"payload"`
	// Justification is why the caller asks (required by policy for some
	// actions, e.g. approval.grant); it is signed into the receipt.
	Justification string `json:"justification,omitempty"`
}

// PricingSet is the payload of pricing.set: one unit price of the catalog
// (projections/cogs projects it into ClickHouse).
type PricingSet struct {
	Meter     string `json:"meter"`
	Unit      string `json:"unit"`
	Region    string `json:"region"` // "*" = every region
	Currency  string `json:"currency"`
	UnitPrice string `json:"unit_price"` // exact decimal string
	// EffectiveFrom is when the price starts to apply (RFC 3339).
	EffectiveFrom string `json:"effective_from"`
	// AppliesToTenant, when set, makes a tenant-specific price that wins
	// over the general one.
	AppliesToTenant string `json:"applies_to_tenant,omitempty"`
}

// ApprovalGrant is the payload of approval.grant: the principal approves
// that Requester may perform Action on Resource until ExpiresAt (default 24h,
// at most the policy's max_approval_ttl).
type ApprovalGrant struct {
	Action    string     `json:"action"`
	Resource  string     `json:"resource"`
	Requester string     `json:"requester"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// PolicyPublish is the payload of policy.bundle.publish: a complete bundle
// (VERSION, *.rego, data.json files) by path. It must compile and pass its
// own tests, or nothing is appended.
type PolicyPublish struct {
	Files map[string]string `json:"files"`
}

// EntityCreate is the payload of entity.create.
type EntityCreate struct {
	ID    string         `json:"id"`
	Kind  string         `json:"kind"`
	Attrs map[string]any `json:"attrs,omitempty"`
	// Selective names attributes whose values are committed in the receipt
	// as salted hashes instead of stored in it (selective disclosure); the
	// processor's configured defaults (e.g. email) are always selective.
	Selective []string `json:"selective,omitempty"`
}

// EntityUpdate is the payload of entity.update: a JSON merge patch of the
// attributes (a null value removes the attribute).
type EntityUpdate struct {
	ID        string         `json:"id"`
	Attrs     map[string]any `json:"attrs"`
	Selective []string       `json:"selective,omitempty"` // as in EntityCreate
}

// EntityDelete is the payload of entity.delete. Without Cascade an entity that
// still has relations is not deleted (409); with it, its relations are
// unlinked by the same receipt.
type EntityDelete struct {
	ID      string `json:"id"`
	Cascade bool   `json:"cascade,omitempty"`
	// Purge erases the subject after the delete (purge manifest, crypto-
	// shredding). Deleting a dual-control (protected) resource always purges.
	Purge bool `json:"purge,omitempty"`
}

// RelationChange is the payload of relation.link and relation.unlink.
// Relation types are data: any name matching ^[a-z][a-z0-9_]{0,63}$.
type RelationChange struct {
	From string `json:"from"`
	Rel  string `json:"rel"`
	To   string `json:"to"`
}

// FieldError is one invalid field; Field is a JSON path such as
// "payload.attrs.region".
type FieldError = httpx.FieldError

// ValidationError lists every invalid field of a command.
type ValidationError struct {
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.Field + ": " + fe.Detail
	}
	return "invalid command: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(field, format string, args ...any) {
	e.Errors = append(e.Errors, FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

func (e *ValidationError) err() error {
	if len(e.Errors) == 0 {
		return nil
	}
	return e
}

// strictUnmarshal decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// jsonFieldError turns a decoder error into a FieldError naming the field.
func jsonFieldError(prefix string, err error) FieldError {
	field := prefix
	var ute *json.UnmarshalTypeError
	var se *json.SyntaxError
	msg := err.Error()
	switch {
	case errors.As(err, &ute):
		if ute.Field != "" {
			field = joinField(prefix, ute.Field)
		}
		msg = fmt.Sprintf("must be %s, got JSON %s", ute.Type.String(), ute.Value)
	case errors.As(err, &se):
		msg = fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case strings.HasPrefix(msg, "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
		field = joinField(prefix, name)
		msg = "unknown field"
	}
	if field == "" {
		field = "body"
	}
	return FieldError{Field: field, Detail: msg}
}

func joinField(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// DecodeCommand strictly decodes and validates a command body. The returned
// error is a *ValidationError naming each bad field.
func DecodeCommand(body []byte) (Command, error) {
	var c Command
	if !utf8.Valid(body) {
		return c, &ValidationError{Errors: []FieldError{{Field: "body", Detail: "not valid UTF-8"}}}
	}
	if err := strictUnmarshal(body, &c); err != nil {
		return c, &ValidationError{Errors: []FieldError{jsonFieldError("", err)}}
	}
	if _, err := c.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

// Validate checks the envelope and decodes the typed payload, which it returns
// (*EntityCreate, *EntityUpdate, *EntityDelete or *RelationChange).
func (c Command) Validate() (any, error) {
	ve := &ValidationError{}
	if c.Tenant == "" {
		ve.add("tenant", "required")
	} else if !tenantRe.MatchString(c.Tenant) {
		ve.add("tenant", "must match %s", tenantRe)
	}
	var payload any
	switch c.Type {
	case TypeEntityCreate:
		payload = &EntityCreate{}
	case TypeEntityUpdate:
		payload = &EntityUpdate{}
	case TypeEntityDelete:
		payload = &EntityDelete{}
	case TypeRelationLink, TypeRelationUnlink:
		payload = &RelationChange{}
		if c.ExpectedVersion != nil {
			ve.add("expected_version", "applies to entity commands only")
		}
	case TypePricingSet, TypeApprovalGrant, TypePolicyPublish:
		switch c.Type {
		case TypePricingSet:
			payload = &PricingSet{}
		case TypeApprovalGrant:
			payload = &ApprovalGrant{}
		default:
			payload = &PolicyPublish{}
		}
		if c.ExpectedVersion != nil {
			ve.add("expected_version", "applies to entity commands only")
		}
	case "":
		ve.add("type", "required")
	default:
		ve.add("type", "unknown command type %q (one of %s)", c.Type, strings.Join(Types, ", "))
	}
	if payload == nil {
		return nil, ve.err()
	}
	if len(c.Payload) == 0 || string(c.Payload) == "null" {
		ve.add("payload", "required")
		return nil, ve
	}
	if err := strictUnmarshal(c.Payload, payload); err != nil {
		ve.Errors = append(ve.Errors, jsonFieldError("payload", err))
		return nil, ve
	}
	switch p := payload.(type) {
	case *EntityCreate:
		validateEntityID(ve, "payload.id", p.ID)
		if p.Kind == "" {
			ve.add("payload.kind", "required")
		} else if !kindRe.MatchString(p.Kind) {
			ve.add("payload.kind", "must match %s", kindRe)
		}
		validateAttrs(ve, "payload.attrs", p.Attrs, false)
		validateSelective(ve, p.Selective, p.Attrs)
	case *EntityUpdate:
		validateEntityID(ve, "payload.id", p.ID)
		if len(p.Attrs) == 0 {
			ve.add("payload.attrs", "required: the attribute patch must change at least one attribute")
		}
		validateAttrs(ve, "payload.attrs", p.Attrs, true)
		validateSelective(ve, p.Selective, p.Attrs)
	case *EntityDelete:
		validateEntityID(ve, "payload.id", p.ID)
	case *RelationChange:
		validateEntityID(ve, "payload.from", p.From)
		validateEntityID(ve, "payload.to", p.To)
		if p.Rel == "" {
			ve.add("payload.rel", "required")
		} else if !relRe.MatchString(p.Rel) {
			ve.add("payload.rel", "must match %s", relRe)
		}
	case *PricingSet:
		validatePricing(ve, p)
	case *ApprovalGrant:
		if !slices.Contains(Types, p.Action) {
			ve.add("payload.action", "must be a command type (one of %s)", strings.Join(Types, ", "))
		}
		validateEntityID(ve, "payload.resource", p.Resource)
		validateEntityID(ve, "payload.requester", p.Requester)
	case *PolicyPublish:
		validateBundleFiles(ve, p.Files)
	}
	if len(c.Justification) > MaxStringLen {
		ve.add("justification", "longer than %d bytes", MaxStringLen)
	}
	if err := ve.err(); err != nil {
		return nil, err
	}
	return payload, nil
}

var (
	meterRe    = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`)
	unitRe     = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	regionRe   = regexp.MustCompile(`^(\*|[a-z0-9][a-z0-9-]{0,31})$`)
	currencyRe = regexp.MustCompile(`^[A-Z]{3}$`)
	// A unit price: up to 18 integer and 12 fraction digits (ClickHouse
	// Decimal(38, 12) holds any of them exactly).
	priceRe      = regexp.MustCompile(`^(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?$`)
	bundlePathRe = regexp.MustCompile(`^([a-z0-9_-]+/)*([A-Za-z0-9_.-]+\.(rego|json)|VERSION)$`)
)

func validatePricing(ve *ValidationError, p *PricingSet) {
	check := func(field, v string, re *regexp.Regexp, hint string) {
		switch {
		case v == "":
			ve.add(field, "required")
		case !re.MatchString(v):
			ve.add(field, "%s (pattern %s)", hint, re)
		}
	}
	check("payload.meter", p.Meter, meterRe, "a meter name such as compute.cpu_seconds")
	check("payload.unit", p.Unit, unitRe, "a unit such as second")
	check("payload.region", p.Region, regionRe, `a region, or "*" for every region`)
	check("payload.currency", p.Currency, currencyRe, "an ISO 4217 code such as USD")
	check("payload.unit_price", p.UnitPrice, priceRe, "a non-negative decimal string such as \"0.000012\" (at most 18 integer and 12 fraction digits)")
	if p.EffectiveFrom == "" {
		ve.add("payload.effective_from", "required")
	} else if _, err := time.Parse(time.RFC3339, p.EffectiveFrom); err != nil {
		ve.add("payload.effective_from", "must be an RFC 3339 time such as 2026-01-01T00:00:00Z")
	}
	if p.AppliesToTenant != "" && !tenantRe.MatchString(p.AppliesToTenant) {
		ve.add("payload.applies_to_tenant", "must match %s", tenantRe)
	}
}

func validateBundleFiles(ve *ValidationError, files map[string]string) {
	if len(files) == 0 {
		ve.add("payload.files", "required: the bundle's files by path (VERSION, *.rego, data.json)")
		return
	}
	if _, ok := files["VERSION"]; !ok {
		ve.add("payload.files", "VERSION is required (a semantic version)")
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if !bundlePathRe.MatchString(name) || strings.Contains(name, "..") {
			ve.add("payload.files."+name, "file names must be relative paths of .rego or .json files, or VERSION")
		}
	}
}

func validateEntityID(ve *ValidationError, field, id string) {
	switch {
	case id == "":
		ve.add(field, "required")
	case len(id) > MaxIDLen:
		ve.add(field, "longer than %d bytes", MaxIDLen)
	case strings.Contains(id, "*"):
		ve.add(field, "must not contain '*' (reserved for queries)")
	case !entityIDRe.MatchString(id):
		ve.add(field, "must look like <prefix>:<name>, e.g. svc:A (pattern %s)", entityIDRe)
	}
}

// validateSelective checks that every selective name is a set attribute.
func validateSelective(ve *ValidationError, names []string, attrs map[string]any) {
	seen := map[string]bool{}
	for i, n := range names {
		f := fmt.Sprintf("payload.selective[%d]", i)
		switch v, ok := attrs[n]; {
		case seen[n]:
			ve.add(f, "attribute %q listed twice", n)
		case !ok:
			ve.add(f, "attribute %q is not in payload.attrs", n)
		case v == nil:
			ve.add(f, "attribute %q is being removed (null); there is no value to commit to", n)
		}
		seen[n] = true
	}
}

// validateAttrs accepts strings, numbers, booleans and lists of those; in a
// patch, null removes the attribute.
func validateAttrs(ve *ValidationError, field string, attrs map[string]any, patch bool) {
	if len(attrs) > MaxAttrs {
		ve.add(field, "at most %d attributes, got %d", MaxAttrs, len(attrs))
		return
	}
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	size := 0
	for _, k := range keys {
		f := field + "." + k
		if !attrKeyRe.MatchString(k) {
			ve.add(f, "attribute name must match %s", attrKeyRe)
			continue
		}
		size += len(k)
		switch v := attrs[k].(type) {
		case nil:
			if !patch {
				ve.add(f, "null is only allowed in entity.update (it removes the attribute)")
			}
		case string:
			size += len(v)
			if len(v) > MaxStringLen {
				ve.add(f, "string longer than %d bytes", MaxStringLen)
			}
		case json.Number, bool:
			size += 8
		case []any:
			if len(v) > MaxAttrListLen {
				ve.add(f, "list longer than %d items", MaxAttrListLen)
			}
			for i, item := range v {
				switch iv := item.(type) {
				case string:
					size += len(iv)
					if len(iv) > MaxStringLen {
						ve.add(fmt.Sprintf("%s[%d]", f, i), "string longer than %d bytes", MaxStringLen)
					}
				case json.Number, bool:
					size += 8
				default:
					ve.add(fmt.Sprintf("%s[%d]", f, i), "list items must be strings, numbers or booleans")
				}
			}
		default:
			ve.add(f, "must be a string, number, boolean or a list of those")
		}
	}
	if size > MaxAttrsBytes {
		ve.add(field, "attributes total %d bytes, limit %d", size, MaxAttrsBytes)
	}
}
