// Package auth owns CompanyOS bearer tokens: issuing EdDSA (Ed25519) signed
// JWTs, verifying them against a key set, reading them from an HTTP request
// and carrying the verified Claims through a context.
//
// It authenticates; it does not authorize. Deciding what a principal may do
// with its tenants and roles belongs to policy, key material on disk belongs
// to internal/keyfile, and mapping ErrMissingToken/ErrInvalidToken/
// ErrExpiredToken to HTTP status codes belongs to the HTTP edge.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Sentinel errors. Every error returned by Verify wraps ErrInvalidToken or
// ErrExpiredToken; BearerToken returns ErrMissingToken or ErrInvalidToken.
// Match them with errors.Is; the rest of the message is for humans.
var (
	ErrMissingToken = errors.New("auth: missing bearer token")
	ErrInvalidToken = errors.New("auth: invalid token")
	ErrExpiredToken = errors.New("auth: token expired")
)

// WildcardTenant in a token's tenants grants every tenant. It must be the
// only entry, so a token is either scoped or unscoped, never both.
const WildcardTenant = "*"

// amrMFA is the RFC 8176 "amr" value that says MFA was performed.
const amrMFA = "mfa"

var (
	principalPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]*:[A-Za-z0-9._\-/@]+$`)
	// rolePattern admits dotted, permission-style names such as
	// "metering.write" next to plain roles such as "admin".
	rolePattern = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
)

// TenantPattern is what a tenant name looks like, everywhere a tenant is
// named: tokens, commands, queries.
var TenantPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Claims is what a verified token says about its bearer.
type Claims struct {
	Principal string    // entity id, e.g. "user:alice"
	Tenants   []string  // tenant names, or ["*"] for every tenant
	Roles     []string  // roles asserted by the issuer, incl. permission-style ones ("metering.write"); may be empty
	MFA       bool      // "amr" contained "mfa"
	AuthTime  time.Time // when the login/MFA happened; zero if not asserted
	IssuedAt  time.Time // zero if the token has no iat
	ExpiresAt time.Time
	ID        string // jti
	Issuer    string
}

// AllowsTenant reports whether the token is scoped to tenant, either by name
// or through the wildcard. The empty tenant is never allowed.
func (c Claims) AllowsTenant(tenant string) bool {
	if tenant == "" {
		return false
	}
	for _, t := range c.Tenants {
		if t == tenant || t == WildcardTenant {
			return true
		}
	}
	return false
}

// clone returns c with its own copies of the slices, so a cached Claims can be
// handed out without callers being able to modify the cache through it.
func (c Claims) clone() Claims {
	c.Tenants = slices.Clone(c.Tenants)
	c.Roles = slices.Clone(c.Roles)
	return c
}

type claimsKey struct{}

// WithClaims returns a context carrying c.
func WithClaims(ctx context.Context, c Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// FromContext returns the Claims stored by WithClaims.
func FromContext(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok
}

// BearerToken extracts the token from "Authorization: Bearer <token>"
// (RFC 6750 §2.1; the scheme is case-insensitive). It returns ErrMissingToken
// when there is no Authorization header or no token after "Bearer", and
// ErrInvalidToken when the header is present but not a usable bearer
// credential: another scheme, several Authorization headers, or characters
// outside the token68 alphabet.
func BearerToken(r *http.Request) (string, error) {
	if r == nil {
		return "", ErrMissingToken
	}
	values := r.Header.Values("Authorization")
	switch {
	case len(values) == 0:
		return "", ErrMissingToken
	case len(values) > 1:
		// Two credentials are ambiguous; picking one could let a proxy and
		// this service disagree on who the caller is.
		return "", fmt.Errorf("%w: %d Authorization headers, want one", ErrInvalidToken, len(values))
	}
	header := strings.TrimSpace(values[0])
	if header == "" {
		return "", ErrMissingToken
	}
	scheme, token := header, ""
	if i := strings.IndexAny(header, " \t"); i >= 0 {
		scheme, token = header[:i], strings.TrimLeft(header[i:], " \t")
	}
	if !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: Authorization scheme %.20q is not Bearer", ErrInvalidToken, scheme)
	}
	if token == "" {
		return "", fmt.Errorf("%w: empty token after Bearer", ErrMissingToken)
	}
	if !isToken68(token) {
		return "", fmt.Errorf("%w: bearer token has characters outside the token68 alphabet", ErrInvalidToken)
	}
	return token, nil
}

// isToken68 reports whether s matches RFC 7235 token68:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isToken68(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

// validatePrincipal, validateTenants and validateRoles are shared by
// IssueRequest.Validate and the verifier, so a token we would not issue is a
// token we do not accept.
func validatePrincipal(p string) error {
	if p == "" {
		return errors.New("principal: required")
	}
	if !principalPattern.MatchString(p) {
		return fmt.Errorf("principal: %q is not an entity id like \"user:alice\" (%s)", p, principalPattern)
	}
	return nil
}

func validateTenants(tenants []string) []error {
	if len(tenants) == 0 {
		return []error{errors.New("tenants: at least one tenant is required")}
	}
	if slices.Contains(tenants, WildcardTenant) {
		if len(tenants) > 1 {
			return []error{fmt.Errorf("tenants: %q must be the only entry when present", WildcardTenant)}
		}
		return nil
	}
	var errs []error
	for i, t := range tenants {
		if !TenantPattern.MatchString(t) {
			errs = append(errs, fmt.Errorf("tenants[%d]: %q is not a tenant name (%s)", i, t, TenantPattern))
		}
	}
	return errs
}

func validateRoles(roles []string) []error {
	var errs []error
	for i, r := range roles {
		if !rolePattern.MatchString(r) {
			errs = append(errs, fmt.Errorf("roles[%d]: %q is not a role name (%s)", i, r, rolePattern))
		}
	}
	return errs
}
