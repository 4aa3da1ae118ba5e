package cogs

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Scales of the stored Decimals (schemas/clickhouse): quantities are
// Decimal(38, 9), unit prices Decimal(38, 18), so a cost is Decimal(38, 27).
const (
	QuantityScale = 9
	PriceScale    = 18
	CostScale     = QuantityScale + PriceScale

	maxQuantityIntDigits = 38 - QuantityScale - 2 // headroom for hourly sums
	maxPriceIntDigits    = 38 - PriceScale - 2
)

var errNotDecimal = errors.New("not a plain decimal")

// parseFixed parses a plain decimal string ("12.5", "-0.25", "7": no sign
// other than a leading "-", no exponent, no spaces) into an integer scaled
// by 10^scale, exactly. It refuses more than scale fractional digits (they
// cannot be stored exactly) and more than maxInt integer digits.
func parseFixed(s string, scale, maxInt int) (*big.Int, error) {
	orig := s
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	intPart, frac, hasDot := strings.Cut(s, ".")
	if intPart == "" || (hasDot && frac == "") || !allDigits(intPart) || !allDigits(frac) {
		return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
	}
	if len(frac) > scale {
		if strings.TrimRight(frac[scale:], "0") != "" {
			return nil, fmt.Errorf("%w: %q has more than %d decimal places", errNotDecimal, orig, scale)
		}
		frac = frac[:scale]
	}
	if t := strings.TrimLeft(intPart, "0"); len(t) > maxInt {
		return nil, fmt.Errorf("%w: %q has more than %d integer digits", errNotDecimal, orig, maxInt)
	}
	if len(intPart)+scale <= 18 { // fits an int64: no string building, no parsing
		var n int64
		for i := 0; i < len(intPart); i++ {
			n = n*10 + int64(intPart[i]-'0')
		}
		for i := 0; i < scale; i++ {
			n *= 10
			if i < len(frac) {
				n += int64(frac[i] - '0')
			}
		}
		if neg {
			n = -n
		}
		return big.NewInt(n), nil
	}
	v, ok := new(big.Int).SetString(intPart+frac+strings.Repeat("0", scale-len(frac)), 10)
	if !ok {
		return nil, fmt.Errorf("%w: %q", errNotDecimal, orig)
	}
	if neg {
		v.Neg(v)
	}
	return v, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// formatFixed prints v / 10^scale as a plain decimal without trailing
// fractional zeros ("12.5", "-0.25", "7").
func formatFixed(v *big.Int, scale int) string {
	if v.IsInt64() && scale <= 40 { // most values: no big.Int arithmetic, two allocations fewer
		n := v.Int64()
		u := uint64(n)
		if n < 0 {
			u = uint64(-n) // also right for math.MinInt64
		}
		var db [20]byte
		digits := strconv.AppendUint(db[:0], u, 10)
		var pb [64]byte
		padded := pb[:0]
		for i := len(digits); i <= scale; i++ {
			padded = append(padded, '0')
		}
		padded = append(padded, digits...)
		intPart := padded[:len(padded)-scale]
		frac := bytes.TrimRight(padded[len(padded)-scale:], "0")
		var ob [66]byte
		out := ob[:0]
		if n < 0 {
			out = append(out, '-')
		}
		out = append(out, intPart...)
		if len(frac) > 0 {
			out = append(out, '.')
			out = append(out, frac...)
		}
		return string(out)
	}
	neg := v.Sign() < 0
	digits := new(big.Int).Abs(v).String()
	if len(digits) <= scale {
		digits = strings.Repeat("0", scale-len(digits)+1) + digits
	}
	intPart, frac := digits[:len(digits)-scale], strings.TrimRight(digits[len(digits)-scale:], "0")
	out := intPart
	if frac != "" {
		out += "." + frac
	}
	if neg && out != "0" {
		out = "-" + out
	}
	return out
}

// Decimal is an exact decimal read from ClickHouse. It implements
// sql.Scanner, so a Decimal column scans into it without floating point
// (clickhouse-go hands over an exact decimal value that prints exactly).
type Decimal struct{ r big.Rat }

// ParseDecimal parses a plain decimal string ("12.5").
func ParseDecimal(s string) (Decimal, error) {
	var d Decimal
	if _, err := parseFixed(s, 64, 64); err != nil {
		return d, err
	}
	if _, ok := d.r.SetString(s); !ok {
		return d, fmt.Errorf("%w: %q", errNotDecimal, s)
	}
	return d, nil
}

// DecimalFromRat returns r as a Decimal.
func DecimalFromRat(r *big.Rat) Decimal {
	var d Decimal
	d.r.Set(r)
	return d
}

// Scan implements sql.Scanner.
func (d *Decimal) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	case fmt.Stringer:
		s = v.String()
	default:
		return fmt.Errorf("cogs: scan %T into Decimal", src)
	}
	if _, ok := d.r.SetString(s); !ok {
		return fmt.Errorf("cogs: scan %q into Decimal", s)
	}
	return nil
}

// Rat returns the value.
func (d Decimal) Rat() *big.Rat { return new(big.Rat).Set(&d.r) }

// Cmp compares d and e.
func (d Decimal) Cmp(e Decimal) int { return d.r.Cmp(&e.r) }

// String prints d exactly as a plain decimal when it has a finite decimal
// expansion (every value read from ClickHouse has), trimmed of trailing
// zeros.
func (d Decimal) String() string { return RatString(&d.r) }

// RatString prints r as a plain decimal, exactly when its denominator has
// only the prime factors 2 and 5, else rounded to 30 decimal places.
func RatString(r *big.Rat) string {
	den := new(big.Int).Set(r.Denom())
	scale := 0
	for _, p := range []int64{2, 5} {
		bp := big.NewInt(p)
		m := new(big.Int)
		for {
			q, rem := new(big.Int).QuoRem(den, bp, m)
			if rem.Sign() != 0 {
				break
			}
			den = q
			scale++
		}
	}
	if den.Cmp(big.NewInt(1)) != 0 || scale > 200 {
		return strings.TrimRight(strings.TrimRight(r.FloatString(30), "0"), ".")
	}
	scaled := new(big.Int).Mul(r.Num(), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil))
	scaled.Quo(scaled, r.Denom())
	return formatFixed(scaled, scale)
}
