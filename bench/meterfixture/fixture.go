// Package meterfixture generates a metering dataset for the FinOps path
// (issue 6): CloudEvents usage for many tenants over many days, with what
// real producers do wrong — duplicates, late and out-of-order events,
// unnormalised tags and units, events that cannot be attributed, poison
// records — plus injected cost anomalies and a unit-price catalog. It
// computes the expected cost per tenant and day itself, with exact
// rational arithmetic and without ClickHouse, and compares a ClickHouse
// result against it (Compare).
//
// Generation is deterministic for a Config. It must not import the code it
// checks beyond the contracts (metering.Event, cogs.PriceSet, the query
// results): expected costs come from the generator's own knowledge of each
// event's true tenant, tags and price.
package meterfixture

import (
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/companyos/companyos/metering"
	"github.com/companyos/companyos/projections/cogs"
)

// Config says what to generate.
type Config struct {
	Tenants int       // optional, default 20
	Days    int       // optional, default 30
	Seed    uint64    // optional, default 7
	Start   time.Time // first day, UTC midnight (optional, default 2026-06-01)
}

func (c *Config) defaults() {
	if c.Tenants <= 0 {
		c.Tenants = 20
	}
	if c.Days <= 0 {
		c.Days = 30
	}
	if c.Seed == 0 {
		c.Seed = 7
	}
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	}
	y, m, d := c.Start.UTC().Date()
	c.Start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Record is one record to produce to metering.events.v1, in order.
type Record struct {
	ID    string `json:"id"`            // the event id (CloudEvents id)
	Key   string `json:"key,omitempty"` // record key: the tenant as sent ("" = none)
	Value []byte `json:"-"`             // the record value
	// Kind is what the record is: event, duplicate, late (an event sent
	// long after its time), unattributed (no tenant), or poison.
	Kind string `json:"kind"`

	// What a counted event costs, independently of the pipeline: the
	// tenant and day it belongs to and quantity × its price (nil: not
	// counted — a duplicate, a poison record, or no price).
	tenant, day string
	cost        *big.Rat
}

// Fixture is a generated dataset.
type Fixture struct {
	Config   Config
	Records  []Record
	Prices   []cogs.PriceSet // the catalog, in the order to set it
	Expected Expected
}

// Expected is what ClickHouse must report for the fixture (expected.json).
type Expected struct {
	Tenants   int              `json:"tenants"`
	Days      int              `json:"days"`
	Seed      uint64           `json:"seed"`
	Start     string           `json:"start"`
	Currency  string           `json:"currency"`
	Costs     []DayCost        `json:"costs"` // per tenant and day, sorted
	Total     string           `json:"total"`
	Anomalies []Anomaly        `json:"anomalies"` // injected
	Counts    Counts           `json:"counts"`
	Poison    []PoisonRecord   `json:"poison"`
	Prices    []cogs.PriceSet  `json:"prices"`
	Meters    map[string]Meter `json:"meters"`
}

// DayCost is one tenant-day's exact cost (a plain decimal string).
type DayCost struct {
	Tenant string `json:"tenant"`
	Day    string `json:"day"` // 2006-01-02
	Cost   string `json:"cost"`
}

// Anomaly is an injected anomaly: the tenant's usage that day was multiplied
// by Factor.
type Anomaly struct {
	Tenant    string `json:"tenant"`
	Day       string `json:"day"`
	Direction string `json:"direction"` // spike or drop
	Factor    string `json:"factor"`
}

// Counts summarise the records.
type Counts struct {
	Records      int `json:"records"`
	Events       int `json:"events"` // distinct valid events (counted once)
	Duplicates   int `json:"duplicates"`
	Late         int `json:"late"`
	Unattributed int `json:"unattributed_tenant"`
	NoService    int `json:"unattributed_service"`
	Poison       int `json:"poison"`
}

// PoisonRecord is a record that must end in the DLQ.
type PoisonRecord struct {
	ID     string `json:"id"`
	Reason string `json:"reason"` // the cogs DLQ reason
}

// Meter is a generated meter.
type Meter struct {
	Unit     string `json:"unit"`
	PerHour  string `json:"base_per_hour"` // base quantity per service-hour before scaling
	Decimals int    `json:"decimals"`
}

var meters = []struct {
	name, unit string
	base       float64
	decimals   int
	units      []string // spellings sent
	services   []string // services that emit it
}{
	{"compute.cpu_seconds", "second", 36000, 3, []string{"second", "second", "s", "seconds", "SEC"}, nil},
	{"storage.gb_hours", "gb-hour", 500, 2, []string{"gb-hour", "gb-hour", "GBh", "gb_hours"}, []string{"db", "search", "batch"}},
	{"network.egress_gb", "gb", 2, 4, []string{"gb", "GB", "gigabytes"}, []string{"api", "web", "search"}},
}

var (
	services = []string{"api", "web", "worker", "db", "search", "batch"}
	regions  = []string{"us-east-1", "eu-west-1", "ap-south-1"}
	teams    = []string{"payments", "platform", "core", "growth", "data"}
	// Spellings producers use for a canonical key or value (tag_rules.yaml).
	keySpellings = map[string][]string{
		"service": {"service", "service", "svc", "Service", " SVC ", "app"},
		"region":  {"region", "region", "zone", "Region"},
		"team":    {"team", "owner", "Squad"},
	}
	valueSpellings = map[string][]string{
		"api":        {"api-svc", "api-server", "API"},
		"web":        {"webapp", "Web"},
		"worker":     {"workers", "WORKER"},
		"us-east-1":  {"use1", "us-east-1a", "US-EAST-1"},
		"eu-west-1":  {"euw1", "EU-West-1"},
		"ap-south-1": {"aps1"},
	}
)

const (
	currency = "USD"
	source   = "//fixture.companyos.dev/meter-agent"
)

type tenantProfile struct {
	name     string
	scale    float64
	services []string
	region   map[string]string // service → region
	team     map[string]string // service → team
}

// trueEvent is what an event really is, whatever its record says.
type trueEvent struct {
	tenant, service, region string
	meter                   string
	hour                    time.Time
	quantity                *big.Rat
}

// Generate builds the fixture for cfg.
func Generate(cfg Config) (*Fixture, error) {
	cfg.defaults()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	f := &Fixture{Config: cfg}
	f.Prices = catalog(cfg)

	profiles := make([]tenantProfile, cfg.Tenants)
	for i := range profiles {
		p := tenantProfile{name: fmt.Sprintf("tenant-%02d", i+1), scale: 0.5 + 4.5*rng.Float64(),
			region: map[string]string{}, team: map[string]string{}}
		perm := rng.Perm(len(services))
		for _, j := range perm[:2+rng.IntN(3)] {
			p.services = append(p.services, services[j])
		}
		sort.Strings(p.services)
		home := regions[rng.IntN(len(regions))]
		for _, s := range p.services {
			p.region[s] = home
			if rng.IntN(4) == 0 {
				p.region[s] = regions[rng.IntN(len(regions))]
			}
			p.team[s] = teams[rng.IntN(len(teams))]
		}
		profiles[i] = p
	}

	// Injected anomalies: distinct tenants, days with a full 14-day history.
	factors := map[string]float64{}
	if cfg.Days >= 18 && cfg.Tenants >= 4 {
		for k, idx := range rng.Perm(cfg.Tenants)[:4] {
			day := 15 + rng.IntN(cfg.Days-17)
			a := Anomaly{Tenant: profiles[idx].name, Day: cfg.Start.AddDate(0, 0, day).Format("2006-01-02"), Direction: "spike", Factor: "5"}
			if k == 3 {
				a.Direction, a.Factor = "drop", "0.2"
			}
			f.Expected.Anomalies = append(f.Expected.Anomalies, a)
			factors[a.Tenant+" "+a.Day] = map[string]float64{"spike": 5, "drop": 0.2}[a.Direction]
		}
	}

	type timed struct {
		rec Record
		at  time.Time // when it is sent: event time plus jitter
		ev  *trueEvent
	}
	var stream []timed
	costOf := func(r *Record, t *trueEvent) {
		r.tenant, r.day = t.tenant, t.hour.Format("2006-01-02")
		if price, ok := priceFor(f.Prices, t); ok {
			r.cost = new(big.Rat).Mul(t.quantity, price)
		}
	}
	n := 0
	newID := func() string { n++; return fmt.Sprintf("evt-%07d", n) }

	for d := 0; d < cfg.Days; d++ {
		day := cfg.Start.AddDate(0, 0, d)
		for _, p := range profiles {
			// Day factor: alternating ±5% plus ±1% noise, so every 14-day
			// baseline has the same spread and only injected days are >3σ.
			dayFactor := 1 + 0.05*float64(1-2*(d%2)) + 0.02*(rng.Float64()-0.5)
			if fct, ok := factors[p.name+" "+day.Format("2006-01-02")]; ok {
				dayFactor *= fct
			}
			for h := 0; h < 24; h++ {
				hour := day.Add(time.Duration(h) * time.Hour)
				for _, s := range p.services {
					for _, m := range meters {
						if m.services != nil && !contains(m.services, s) {
							continue
						}
						q := m.base * p.scale * dayFactor * (1 + 0.04*(rng.Float64()-0.5))
						qty := fmt.Sprintf("%.*f", m.decimals, q)
						t := &trueEvent{tenant: p.name, service: s, region: p.region[s], meter: m.name, hour: hour, quantity: mustRat(qty)}
						at := hour.Add(time.Duration(rng.Int64N(int64(time.Hour))))
						rec, te := f.event(rng, p, t, m.units, qty, at, newID())
						if te.service == cogs.Unattributed {
							f.Expected.Counts.NoService++
						}
						costOf(&rec, te)
						stream = append(stream, timed{rec: rec, at: at.Add(time.Duration(rng.Int64N(int64(6 * time.Hour)))), ev: te})
					}
				}
			}
		}
	}
	// Events nobody can attribute to a tenant: no subject, no key.
	for i := 0; i < 12 && len(stream) > 0; i++ {
		base := stream[rng.IntN(len(stream))]
		t := *base.ev
		t.tenant = cogs.Unattributed
		qty := "7.5"
		t.quantity = mustRat(qty)
		t.region = "global"
		id := newID()
		e := metering.Event{SpecVersion: "1.0", ID: id, Source: source, Type: t.meter, Time: t.hour.Add(30 * time.Minute),
			Data: metering.Data{Quantity: qty, Unit: unitOf(t.meter), Tags: map[string]string{"service": t.service}}}
		f.Expected.Counts.Unattributed++
		rec := Record{ID: id, Value: mustJSON(e), Kind: "unattributed"}
		costOf(&rec, &t)
		stream = append(stream, timed{rec: rec, at: base.at})
	}
	sort.SliceStable(stream, func(i, j int) bool { return stream[i].at.Before(stream[j].at) })

	recs := make([]Record, 0, len(stream)*103/100)
	var late []Record
	for _, s := range stream {
		if rng.IntN(100) == 0 {
			s.rec.Kind = "late"
			late = append(late, s.rec)
			continue
		}
		recs = append(recs, s.rec)
	}
	recs = append(recs, late...)
	f.Expected.Counts.Late = len(late)
	// Duplicates: about 2% of records are sent again, up to ~3000 records
	// later (a retrying producer, a replayed batch).
	withDups := make([]Record, 0, len(recs)*103/100)
	var pendingDups []struct {
		at  int
		rec Record
	}
	for i, r := range recs {
		withDups = append(withDups, r)
		if rng.IntN(50) == 0 {
			d := r
			d.Kind, d.cost = "duplicate", nil
			pendingDups = append(pendingDups, struct {
				at  int
				rec Record
			}{i + 1 + rng.IntN(3000), d})
		}
		for k := 0; k < len(pendingDups); {
			if pendingDups[k].at <= i {
				withDups = append(withDups, pendingDups[k].rec)
				f.Expected.Counts.Duplicates++
				pendingDups = append(pendingDups[:k], pendingDups[k+1:]...)
				continue
			}
			k++
		}
	}
	for _, d := range pendingDups {
		withDups = append(withDups, d.rec)
		f.Expected.Counts.Duplicates++
	}
	// Poison records, spread through the stream.
	for _, pr := range poisonRecords(cfg, newID) {
		at := rng.IntN(len(withDups) + 1)
		withDups = append(withDups[:at], append([]Record{pr.rec}, withDups[at:]...)...)
		f.Expected.Poison = append(f.Expected.Poison, pr.info)
	}
	f.Expected.Counts.Poison = len(f.Expected.Poison)
	f.Records = withDups
	f.Expected.Counts.Records = len(f.Records)

	f.Expected.Tenants, f.Expected.Days, f.Expected.Seed = cfg.Tenants, cfg.Days, cfg.Seed
	f.Expected.Start, f.Expected.Currency, f.Expected.Prices = cfg.Start.Format("2006-01-02"), currency, f.Prices
	f.Expected.Meters = map[string]Meter{}
	for _, m := range meters {
		f.Expected.Meters[m.name] = Meter{Unit: m.unit, PerHour: fmt.Sprint(m.base), Decimals: m.decimals}
	}
	f.Recompute(nil)
	return f, nil
}

// Recompute sets the expected costs and the event count from the records,
// leaving out the events whose ids are in dropped (those an ingest API
// refused, say: the pipeline never saw them).
func (f *Fixture) Recompute(dropped map[string]bool) {
	costs := map[string]*big.Rat{}
	total := new(big.Rat)
	f.Expected.Counts.Events = 0
	for _, r := range f.Records {
		if r.Kind == "duplicate" || r.Kind == "poison" || dropped[r.ID] {
			continue
		}
		f.Expected.Counts.Events++
		if r.cost == nil {
			continue
		}
		k := r.tenant + " " + r.day
		if costs[k] == nil {
			costs[k] = new(big.Rat)
		}
		costs[k].Add(costs[k], r.cost)
		total.Add(total, r.cost)
	}
	f.Expected.Costs = f.Expected.Costs[:0]
	for k, c := range costs {
		tenant, day, _ := strings.Cut(k, " ")
		f.Expected.Costs = append(f.Expected.Costs, DayCost{Tenant: tenant, Day: day, Cost: cogs.RatString(c)})
	}
	sort.Slice(f.Expected.Costs, func(i, j int) bool {
		a, b := f.Expected.Costs[i], f.Expected.Costs[j]
		return a.Tenant < b.Tenant || a.Tenant == b.Tenant && a.Day < b.Day
	})
	f.Expected.Total = cogs.RatString(total)
}

// event renders a true event as a producer would send it: tags and units
// spelt in any accepted way, sometimes missing a tag, the tenant sometimes
// in another case. It returns the record and what the event really is
// (a missing tag takes its documented default).
func (f *Fixture) event(rng *rand.Rand, p tenantProfile, t *trueEvent, units []string, qty string, at time.Time, id string) (Record, *trueEvent) {
	tags := map[string]string{}
	spell := func(key, value string) {
		k := keySpellings[key][rng.IntN(len(keySpellings[key]))]
		v := value
		if alts := valueSpellings[value]; len(alts) > 0 && rng.IntN(3) == 0 {
			v = alts[rng.IntN(len(alts))]
		} else if rng.IntN(8) == 0 {
			v = "  " + strings.ToUpper(v) + " "
		}
		tags[k] = v
	}
	switch {
	case rng.IntN(400) == 0:
		t.service = cogs.Unattributed // no service tag: attributed to the tenant only
	default:
		spell("service", t.service)
	}
	if rng.IntN(20) == 0 {
		t.region = "global" // region missing: the default, priced by '*' prices
	} else {
		spell("region", t.region)
	}
	if rng.IntN(10) != 0 {
		spell("team", p.team[t.service])
	}
	if rng.IntN(10) == 0 {
		tags["env"] = "Production"
	}
	subject := t.tenant
	switch rng.IntN(40) {
	case 0:
		subject = strings.ToUpper(subject)
	case 1:
		subject = " " + subject + " "
	}
	meterName := t.meter
	if rng.IntN(30) == 0 {
		meterName = strings.ToUpper(meterName[:1]) + meterName[1:]
	}
	e := metering.Event{SpecVersion: "1.0", ID: id, Source: source, Type: meterName, Subject: subject, Time: at,
		DataContentType: "application/json",
		Data:            metering.Data{Quantity: qty, Unit: units[rng.IntN(len(units))], Tags: tags}}
	return Record{ID: id, Key: t.tenant, Value: mustJSON(e), Kind: "event"}, t
}

// poisonRecords are records the projector must send to the DLQ.
func poisonRecords(cfg Config, newID func() string) []struct {
	rec  Record
	info PoisonRecord
} {
	at := cfg.Start.Add(36 * time.Hour)
	mk := func(mutate func(*metering.Event)) (string, []byte) {
		id := newID()
		e := metering.Event{SpecVersion: "1.0", ID: id, Source: source, Type: "compute.cpu_seconds", Subject: "tenant-01", Time: at,
			Data: metering.Data{Quantity: "1", Unit: "second", Tags: map[string]string{"service": "api"}}}
		mutate(&e)
		return id, mustJSON(e)
	}
	var out []struct {
		rec  Record
		info PoisonRecord
	}
	add := func(reason string, mutate func(*metering.Event)) {
		id, v := mk(mutate)
		out = append(out, struct {
			rec  Record
			info PoisonRecord
		}{Record{ID: id, Key: "tenant-01", Value: v, Kind: "poison"}, PoisonRecord{ID: id, Reason: reason}})
	}
	for _, q := range []string{"1e3", "12,5", "abc", "0.0000000001", "NaN"} {
		add(cogs.ReasonInvalidDecimal, func(e *metering.Event) { e.Data.Quantity = q })
	}
	add(cogs.ReasonUnknownUnit, func(e *metering.Event) { e.Data.Unit = "hour" })
	add(cogs.ReasonUnknownUnit, func(e *metering.Event) { e.Type, e.Data.Unit = "storage.gb_hours", "tb-month" })
	add(cogs.ReasonUnknownMeter, func(e *metering.Event) { e.Type = "gpu.seconds" })
	add(cogs.ReasonInvalidEvent, func(e *metering.Event) { e.Time = time.Time{} })
	add(cogs.ReasonInvalidEvent, func(e *metering.Event) { e.SpecVersion = "0.3" })
	// Not JSON at all: a truncated event.
	id, v := mk(func(*metering.Event) {})
	out = append(out, struct {
		rec  Record
		info PoisonRecord
	}{Record{ID: id, Key: "tenant-01", Value: v[:len(v)/2], Kind: "poison"}, PoisonRecord{ID: id, Reason: cogs.ReasonBadJSON}})
	return out
}

// catalog is the fixture's unit-price catalog: general prices, a regional
// one, a tenant contract price, and a price change in the middle of the
// period.
func catalog(cfg Config) []cogs.PriceSet {
	base := cfg.Start.AddDate(0, 0, -30).Format(time.RFC3339)
	mid := cfg.Start.AddDate(0, 0, cfg.Days/2).Format(time.RFC3339)
	return []cogs.PriceSet{
		{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: currency, UnitPrice: "0.000012", EffectiveFrom: base},
		{Meter: "storage.gb_hours", Unit: "gb-hour", Region: "*", Currency: currency, UnitPrice: "0.000137", EffectiveFrom: base},
		{Meter: "storage.gb_hours", Unit: "gb-hour", Region: "eu-west-1", Currency: currency, UnitPrice: "0.00015", EffectiveFrom: base},
		{Meter: "network.egress_gb", Unit: "gb", Region: "*", Currency: currency, UnitPrice: "0.09", EffectiveFrom: base},
		{Meter: "network.egress_gb", Unit: "gb", Region: "*", Currency: currency, UnitPrice: "0.05", EffectiveFrom: base, AppliesToTenant: "tenant-03"},
		{Meter: "compute.cpu_seconds", Unit: "second", Region: "*", Currency: currency, UnitPrice: "0.0000118", EffectiveFrom: mid},
	}
}

// priceFor resolves the unit price of an event independently of ClickHouse:
// a tenant-specific price beats a general one, then a regional one beats
// '*', then the latest effective_from, then the later entry of the catalog.
func priceFor(cat []cogs.PriceSet, t *trueEvent) (*big.Rat, bool) {
	best, bestRank := -1, [4]int64{}
	for i, p := range cat {
		eff, err := time.Parse(time.RFC3339, p.EffectiveFrom)
		if err != nil || p.Meter != t.meter || p.Currency != currency || eff.After(t.hour) {
			continue
		}
		region := p.Region
		if region == "" {
			region = "*"
		}
		if region != "*" && region != t.region || p.AppliesToTenant != "" && p.AppliesToTenant != t.tenant {
			continue
		}
		rank := [4]int64{b2i(p.AppliesToTenant != ""), b2i(region != "*"), eff.Unix(), int64(i)}
		if best < 0 || less(bestRank, rank) {
			best, bestRank = i, rank
		}
	}
	if best < 0 {
		return nil, false
	}
	return mustRat(cat[best].UnitPrice), true
}

func less(a, b [4]int64) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func unitOf(meter string) string {
	for _, m := range meters {
		if m.name == meter {
			return m.unit
		}
	}
	return ""
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func mustRat(s string) *big.Rat {
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		panic("meterfixture: bad decimal " + s)
	}
	return r
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
