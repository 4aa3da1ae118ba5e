package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/companyos/companyos/internal/keyfile"
)

// MaxTTL bounds IssueRequest.TTL: a stolen token is useful for at most this
// long, and verified-token cache entries live no longer.
const MaxTTL = 30 * 24 * time.Hour

// IssueRequest describes the token to issue.
type IssueRequest struct {
	Principal string        // required: entity id, e.g. "user:alice"
	Tenants   []string      // required: ≥1 tenant name, or ["*"] for every tenant
	Roles     []string      // optional: issuer-asserted roles
	MFA       bool          // optional: the login included MFA ("amr":["mfa"])
	TTL       time.Duration // required: > 0 and ≤ MaxTTL
}

// Validate reports every problem with r at once; each message starts with
// the field it is about.
func (r IssueRequest) Validate() error {
	var errs []error
	if err := validatePrincipal(r.Principal); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, validateTenants(r.Tenants)...)
	errs = append(errs, validateRoles(r.Roles)...)
	switch {
	case r.TTL <= 0:
		errs = append(errs, fmt.Errorf("ttl: must be positive (got %s)", r.TTL))
	case r.TTL > MaxTTL:
		errs = append(errs, fmt.Errorf("ttl: %s exceeds the maximum of %s", r.TTL, MaxTTL))
	}
	return errors.Join(errs...)
}

// Issuer signs tokens with one Ed25519 key. It is safe for concurrent use.
type Issuer struct {
	name  string
	key   ed25519.PrivateKey
	keyID string

	// now is the clock; tests replace it.
	now func() time.Time
}

// NewIssuer returns an issuer that stamps tokens with iss = name and signs
// them with key. A missing name or malformed key is reported by Issue, so
// wiring never panics.
func NewIssuer(name string, key ed25519.PrivateKey) *Issuer {
	i := &Issuer{name: name, key: key, now: time.Now}
	if len(key) == ed25519.PrivateKeySize {
		i.keyID = keyfile.KeyID(key.Public().(ed25519.PublicKey))
	}
	return i
}

// tokenClaims is the JWT payload.
type tokenClaims struct {
	jwt.RegisteredClaims
	Tenants  []string         `json:"tenants"`
	Roles    []string         `json:"roles,omitempty"`
	AMR      []string         `json:"amr,omitempty"`
	AuthTime *jwt.NumericDate `json:"auth_time,omitempty"`
}

// Issue validates r and returns a signed token valid from now for r.TTL.
// auth_time is the issue time: a token is minted right after the login it
// attests.
func (i *Issuer) Issue(r IssueRequest) (string, error) {
	if i.name == "" {
		return "", errors.New("auth: issue: issuer name is required")
	}
	if i.keyID == "" {
		return "", fmt.Errorf("auth: issue: signing key must be an Ed25519 private key of %d bytes", ed25519.PrivateKeySize)
	}
	if err := r.Validate(); err != nil {
		return "", fmt.Errorf("auth: issue: %w", err)
	}
	now := i.now()
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.name,
			Subject:   r.Principal,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(r.TTL)),
			ID:        rand.Text(),
		},
		Tenants:  slices.Clone(r.Tenants),
		Roles:    slices.Clone(r.Roles),
		AuthTime: jwt.NewNumericDate(now),
	}
	if r.MFA {
		c.AMR = []string{amrMFA}
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["kid"] = i.keyID
	signed, err := t.SignedString(i.key)
	if err != nil {
		return "", fmt.Errorf("auth: issue: sign: %w", err)
	}
	return signed, nil
}

// KeySet is the public half of the signing key, ready for a Verifier or for
// serving at /v1/keys. It is empty when the key is malformed.
func (i *Issuer) KeySet() keyfile.KeySet {
	if i.keyID == "" {
		return keyfile.KeySet{}
	}
	return keyfile.KeySet{Keys: []keyfile.PublicKey{keyfile.Public(i.key.Public().(ed25519.PublicKey))}}
}
