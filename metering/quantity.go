package metering

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Quantity limits. A normalised quantity has at most MaxQuantityIntDigits
// integer digits and MaxQuantityFracDigits fraction digits, so every accepted
// value fits Decimal(38, 18) (ClickHouse Decimal128) exactly: nothing is ever
// rounded, a value that does not fit is rejected.
const (
	MaxQuantityIntDigits  = 20
	MaxQuantityFracDigits = 18
	// MaxQuantityChars bounds the value as sent (before normalisation).
	MaxQuantityChars = 64
	// maxExponentDigits bounds the exponent of a JSON number ("1e9999"),
	// so normalising never builds a huge string.
	maxExponentDigits = 4
)

// NormalizeQuantity turns data.quantity as sent — the raw JSON value, a
// number such as 12.5 or 1.5e3, or a string such as "12.50" — into its
// canonical decimal string: no sign, no exponent, no leading zeros in the
// integer part, no trailing zeros in the fraction, no "." without a fraction
// ("12.5", "1500", "0.001", "0"). It never goes through float64.
//
// A string must be a plain decimal (digits, optionally "." and digits);
// exponent notation is accepted only in a JSON number, where it is part of
// the JSON grammar. Negative values are rejected; negative zero is zero. The
// error is a human-readable detail without the field name.
func NormalizeQuantity(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", fmt.Errorf("required")
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("must be a JSON number or a decimal string")
		}
		return normalizeDecimal(s, false)
	case c == '-' || (c >= '0' && c <= '9'):
		return normalizeDecimal(string(raw), true)
	default:
		return "", fmt.Errorf("must be a JSON number or a decimal string, e.g. 12.5 or \"12.5\"")
	}
}

// NormalizeDecimal normalises a plain decimal string ("0012.50" → "12.5")
// under the same rules and limits as NormalizeQuantity.
func NormalizeDecimal(s string) (string, error) { return normalizeDecimal(s, false) }

// IsCanonicalQuantity reports whether s is already a normalised quantity,
// as every Event on metering.events.v1 carries.
func IsCanonicalQuantity(s string) bool {
	n, err := normalizeDecimal(s, false)
	return err == nil && n == s
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// normalizeDecimal parses [-]digits[.digits] and, when allowExp,
// [(e|E)[+|-]digits]; the grammar of a JSON number except that leading
// zeros are tolerated (a JSON decoder has already refused them in numbers).
func normalizeDecimal(s string, allowExp bool) (string, error) {
	const example = `a non-negative decimal such as "12.5"`
	if s == "" {
		return "", fmt.Errorf("must be %s, got an empty string", example)
	}
	if len(s) > MaxQuantityChars {
		return "", fmt.Errorf("must be at most %d characters, got %d", MaxQuantityChars, len(s))
	}
	i := 0
	neg := false
	if s[0] == '-' {
		neg, i = true, 1
	}
	intStart := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intPart := s[intStart:i]
	if intPart == "" {
		return "", notDecimal(s, example)
	}
	fracPart := ""
	if i < len(s) && s[i] == '.' {
		i++
		fracStart := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fracPart = s[fracStart:i]
		if fracPart == "" {
			return "", notDecimal(s, example)
		}
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		if !allowExp {
			return "", fmt.Errorf("must be a plain decimal string without exponent (send %q as a JSON number or write it out)", s)
		}
		i++
		expNeg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			expNeg = s[i] == '-'
			i++
		}
		expStart := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		digits := strings.TrimLeft(s[expStart:i], "0")
		if expStart == i {
			return "", notDecimal(s, example)
		}
		if len(digits) > maxExponentDigits {
			return "", fmt.Errorf("exponent of %s is out of range", s)
		}
		for _, c := range []byte(digits) {
			exp = exp*10 + int(c-'0')
		}
		if expNeg {
			exp = -exp
		}
	}
	if i != len(s) {
		return "", notDecimal(s, example)
	}

	// value = 0.D × 10^point, D = intPart+fracPart.
	digits := intPart + fracPart
	point := len(intPart) + exp
	lead := 0
	for lead < len(digits) && digits[lead] == '0' {
		lead++
	}
	digits, point = digits[lead:], point-lead
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return "0", nil // zero, including "-0" and "0e5"
	}
	if neg {
		return "", fmt.Errorf("must not be negative, got %s", s)
	}
	if point > MaxQuantityIntDigits {
		return "", fmt.Errorf("%s has more than %d integer digits", s, MaxQuantityIntDigits)
	}
	if frac := len(digits) - point; frac > MaxQuantityFracDigits {
		return "", fmt.Errorf("%s has more than %d significant fraction digits (quantities are exact and never rounded)", s, MaxQuantityFracDigits)
	}
	switch {
	case point <= 0:
		return "0." + strings.Repeat("0", -point) + digits, nil
	case point >= len(digits):
		return digits + strings.Repeat("0", point-len(digits)), nil
	default:
		return digits[:point] + "." + digits[point:], nil
	}
}

func notDecimal(s, example string) error {
	switch strings.ToLower(strings.TrimLeft(s, "+-")) {
	case "nan", "inf", "infinity":
		return fmt.Errorf("must be a finite number, got %q", s)
	}
	return fmt.Errorf("must be %s, got %q", example, s)
}
