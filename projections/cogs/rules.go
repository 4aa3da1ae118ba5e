package cogs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/companyos/companyos/schemas"
)

// Unattributed is the tenant or service of usage that cannot be attributed.
// It is a fixed name: the FinOps queries select it.
const Unattributed = "(unattributed)"

// The allocation tags, stored as their own columns.
const (
	TagService = "service"
	TagRegion  = "region"
	TagTeam    = "team"
)

// Rules are the normalisation rules of metering events
// (schemas/clickhouse/tag_rules.yaml documents the format and the order in
// which they apply). Build them with ParseRules or DefaultRules.
type Rules struct {
	keyAliases   map[string]string
	foldValues   bool
	valueAliases map[string]map[string]string
	defaults     map[string]string
	meters       map[string]meterRule
}

type meterRule struct {
	unit    string
	aliases map[string]bool
}

type rulesFile struct {
	Keys struct {
		Aliases map[string]string `yaml:"aliases"`
	} `yaml:"keys"`
	Values struct {
		FoldCase bool                         `yaml:"fold_case"`
		Aliases  map[string]map[string]string `yaml:"aliases"`
	} `yaml:"values"`
	Defaults map[string]string `yaml:"defaults"`
	Meters   map[string]struct {
		Unit        string   `yaml:"unit"`
		UnitAliases []string `yaml:"unit_aliases"`
	} `yaml:"meters"`
}

// DefaultRules returns the rules embedded from
// schemas/clickhouse/tag_rules.yaml.
func DefaultRules() (*Rules, error) {
	b, err := fs.ReadFile(schemas.ClickHouse, "clickhouse/tag_rules.yaml")
	if err != nil {
		return nil, fmt.Errorf("cogs: rules: %w", err)
	}
	return ParseRules(b)
}

// ParseRules parses and checks a rules file. Unknown fields are errors, so a
// misspelt rule does not silently do nothing.
func ParseRules(b []byte) (*Rules, error) {
	var f rulesFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("cogs: rules: %w", err)
	}
	r := &Rules{
		keyAliases:   map[string]string{},
		foldValues:   f.Values.FoldCase,
		valueAliases: map[string]map[string]string{},
		defaults:     map[string]string{},
		meters:       map[string]meterRule{},
	}
	var errs []error
	for k, v := range f.Keys.Aliases {
		k, v = foldKey(k), foldKey(v)
		if k == "" || v == "" {
			errs = append(errs, fmt.Errorf("keys.aliases: empty key or target (%q)", k))
			continue
		}
		r.keyAliases[k] = v
	}
	for k, m := range f.Values.Aliases {
		k = foldKey(k)
		if alias, ok := r.keyAliases[k]; ok {
			errs = append(errs, fmt.Errorf("values.aliases.%s: %s is an alias of %s; use the canonical key", k, k, alias))
		}
		am := map[string]string{}
		for from, to := range m {
			from, to = r.foldValue(from), r.foldValue(to)
			if from == "" || to == "" {
				errs = append(errs, fmt.Errorf("values.aliases.%s: empty value", k))
				continue
			}
			am[from] = to
		}
		r.valueAliases[k] = am
	}
	for k, v := range f.Defaults {
		k, v = foldKey(k), r.foldValue(v)
		if k == TagService {
			errs = append(errs, errors.New("defaults: service has no default; usage without one is reported as unattributed"))
		}
		if v == "" {
			errs = append(errs, fmt.Errorf("defaults.%s: empty value", k))
		}
		r.defaults[k] = v
	}
	if len(f.Meters) == 0 {
		errs = append(errs, errors.New("meters: none listed"))
	}
	for m, mr := range f.Meters {
		m = foldKey(m)
		unit := foldKey(mr.Unit)
		if unit == "" {
			errs = append(errs, fmt.Errorf("meters.%s: unit required", m))
		}
		rule := meterRule{unit: unit, aliases: map[string]bool{unit: true}}
		for _, a := range mr.UnitAliases {
			rule.aliases[foldKey(a)] = true
		}
		r.meters[m] = rule
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("cogs: rules: %w", err)
	}
	return r, nil
}

func foldKey(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func (r *Rules) foldValue(s string) string {
	s = strings.TrimSpace(s)
	if r.foldValues {
		s = strings.ToLower(s)
	}
	return s
}

// Tags are the normalised tags of one event.
type Tags struct {
	Service, Region, Team string
	// Keys and Values are every normalised tag (including the three above
	// and the defaults), sorted by key.
	Keys, Values []string
}

// NormalizeTags applies the rules to raw tags. A missing service becomes
// Unattributed.
func (r *Rules) NormalizeTags(raw map[string]string) Tags {
	type cand struct {
		rawKey, value string
		canonical     bool
	}
	best := map[string]cand{}
	for k, v := range raw {
		fk := foldKey(k)
		key, canonical := fk, true
		if a, ok := r.keyAliases[fk]; ok {
			key, canonical = a, false
		}
		if key == "" {
			continue
		}
		val := r.foldValue(v)
		if val == "" {
			continue
		}
		if m := r.valueAliases[key]; m != nil {
			if a, ok := m[val]; ok {
				val = a
			}
		}
		c := cand{rawKey: k, value: val, canonical: canonical}
		if old, ok := best[key]; ok {
			// The canonical spelling wins, then the first raw key.
			if old.canonical && !c.canonical || old.canonical == c.canonical && old.rawKey < c.rawKey {
				continue
			}
		}
		best[key] = c
	}
	out := map[string]string{}
	for k, c := range best {
		out[k] = c.value
	}
	for k, v := range r.defaults {
		if _, ok := out[k]; !ok {
			out[k] = v
		}
	}
	if _, ok := out[TagService]; !ok {
		out[TagService] = Unattributed
	}
	t := Tags{Service: out[TagService], Region: out[TagRegion], Team: out[TagTeam]}
	t.Keys = make([]string, 0, len(out))
	for k := range out {
		t.Keys = append(t.Keys, k)
	}
	sort.Strings(t.Keys)
	t.Values = make([]string, len(t.Keys))
	for i, k := range t.Keys {
		t.Values[i] = out[k]
	}
	return t
}

// NormalizeRegion normalises a region named outside tags (a price's
// region); "*" stays "*".
func (r *Rules) NormalizeRegion(s string) string {
	v := r.foldValue(s)
	if v == "*" {
		return v
	}
	if a, ok := r.valueAliases[TagRegion][v]; ok {
		return a
	}
	return v
}

// Meter normalises a meter name and reports whether the rules know it.
func (r *Rules) Meter(m string) (string, bool) {
	m = foldKey(m)
	_, ok := r.meters[m]
	return m, ok
}

// Unit returns the canonical unit of meter for unit as sent, or false when
// the unit is not the meter's (or the meter is unknown).
func (r *Rules) Unit(meter, unit string) (string, bool) {
	mr, ok := r.meters[foldKey(meter)]
	if !ok || !mr.aliases[foldKey(unit)] {
		return "", false
	}
	return mr.unit, true
}
