package cogs

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/companyos/companyos/auth"
	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

// ActionPricingSet is the receipt action (and command type) that sets a
// unit price. Only allowed receipts change the catalog.
const ActionPricingSet = "pricing.set"

// PriceSet is the payload of a pricing.set command, as the receipt carries
// it in command.payload.
type PriceSet struct {
	Meter     string `json:"meter"`
	Unit      string `json:"unit"`
	Region    string `json:"region,omitempty"` // "" or "*" = every region
	Currency  string `json:"currency"`         // ISO 4217, e.g. USD
	UnitPrice string `json:"unit_price"`       // plain decimal, at most 18 decimal places
	// EffectiveFrom is RFC 3339 and must be a whole UTC hour, so that an
	// hourly usage bucket never straddles a price change.
	EffectiveFrom   string `json:"effective_from"`
	AppliesToTenant string `json:"applies_to_tenant,omitempty"` // "" = every tenant
}

// receiptHead is the part of a receipt payload the catalog needs.
type receiptHead struct {
	ID            string          `json:"id"`
	Action        string          `json:"action"`
	Actor         string          `json:"actor"`
	Tenant        string          `json:"tenant"`
	Decision      string          `json:"decision"`
	PolicyVersion string          `json:"policy_version"`
	CreatedAt     time.Time       `json:"created_at"`
	Seq           uint64          `json:"seq"`
	CommandID     string          `json:"command_id"`
	Command       json.RawMessage `json:"command"`
}

// parsePriceReceipt returns the catalog row of an allowed pricing.set
// receipt, nil for any other receipt, or a poison error.
func parsePriceReceipt(rules *Rules, keys *keyfile.KeySet, value []byte, pos position) (*priceRow, error) {
	env, err := events.ParseEnvelope(value)
	if err != nil {
		return nil, poison(ReasonBadEnvelope, "%v", err)
	}
	var r receiptHead
	if err := json.Unmarshal(env.Payload, &r); err != nil {
		return nil, poison(ReasonBadEnvelope, "receipt payload: %v", err)
	}
	if r.Action != ActionPricingSet || r.Decision != events.DecisionAllow {
		return nil, nil
	}
	if keys != nil {
		if err := env.Verify(*keys); err != nil {
			return nil, poison(ReasonBadSignature, "receipt %s: %v", r.ID, err)
		}
	}
	var cmd struct {
		Type    string   `json:"type"`
		Payload PriceSet `json:"payload"`
	}
	if err := json.Unmarshal(r.Command, &cmd); err != nil {
		return nil, poison(ReasonInvalidPrice, "receipt %s: command: %v", r.ID, err)
	}
	if cmd.Type != ActionPricingSet {
		return nil, poison(ReasonInvalidPrice, "receipt %s: command type %q under action %s", r.ID, cmd.Type, ActionPricingSet)
	}
	row, err := rules.priceRow(cmd.Payload)
	if err != nil {
		return nil, poison(ReasonInvalidPrice, "receipt %s: %v", r.ID, err)
	}
	row.receiptID, row.receiptSeq, row.receiptTenant = r.ID, r.Seq, r.Tenant
	row.actor, row.commandID, row.policyVersion = r.Actor, r.CommandID, r.PolicyVersion
	row.createdAt = r.CreatedAt.UTC().Truncate(time.Second)
	row.keyID = env.Signatures[0].KeyID
	row.pos = pos
	if row.receiptID == "" {
		return nil, poison(ReasonInvalidPrice, "receipt without id")
	}
	return row, nil
}

// ValidatePriceSet checks a pricing.set payload the way the projector will
// (the command processor can call it to refuse what could not be
// projected).
func ValidatePriceSet(rules *Rules, ps PriceSet) error {
	_, err := rules.priceRow(ps)
	return err
}

func (r *Rules) priceRow(ps PriceSet) (*priceRow, error) {
	row := &priceRow{}
	var errs []string
	meter, known := r.Meter(ps.Meter)
	if meter == "" {
		errs = append(errs, "meter required")
	}
	row.meter = meter
	row.unit = foldKey(ps.Unit)
	if known {
		if u, ok := r.Unit(meter, ps.Unit); ok {
			row.unit = u
		} else {
			errs = append(errs, fmt.Sprintf("unit %q is not a unit of meter %s", ps.Unit, meter))
		}
	}
	if row.unit == "" {
		errs = append(errs, "unit required")
	}
	row.region = "*"
	if strings.TrimSpace(ps.Region) != "" {
		row.region = r.NormalizeRegion(ps.Region)
	}
	row.currency = strings.ToUpper(strings.TrimSpace(ps.Currency))
	if len(row.currency) != 3 || strings.Trim(row.currency, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		errs = append(errs, fmt.Sprintf("currency %q is not an ISO 4217 code", ps.Currency))
	}
	price, err := parseFixed(strings.TrimSpace(ps.UnitPrice), PriceScale, maxPriceIntDigits)
	switch {
	case err != nil:
		errs = append(errs, fmt.Sprintf("unit_price: %v", err))
	case price.Sign() < 0:
		errs = append(errs, "unit_price must not be negative")
	}
	row.unitPrice = price
	eff, err := time.Parse(time.RFC3339, strings.TrimSpace(ps.EffectiveFrom))
	switch {
	case err != nil:
		errs = append(errs, fmt.Sprintf("effective_from: %v", err))
	case !eff.Equal(eff.Truncate(time.Hour)):
		errs = append(errs, fmt.Sprintf("effective_from %s is not a whole hour", ps.EffectiveFrom))
	case eff.Before(minDateTime) || !eff.Before(maxDateTime):
		errs = append(errs, fmt.Sprintf("effective_from %s outside 1970..2106", ps.EffectiveFrom))
	}
	row.effectiveFrom = eff.UTC()
	if t := strings.TrimSpace(ps.AppliesToTenant); t != "" {
		row.appliesTo = strings.ToLower(t)
		if !auth.TenantPattern.MatchString(row.appliesTo) {
			errs = append(errs, fmt.Sprintf("applies_to_tenant %q is not a tenant name", ps.AppliesToTenant))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return row, nil
}
