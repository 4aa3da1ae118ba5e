package auth

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/companyos/companyos/internal/keyfile"
)

const (
	// DefaultLeeway is the clock skew tolerated on exp, nbf, iat and auth_time.
	DefaultLeeway = 30 * time.Second
	// MaxLeeway bounds Leeway: more skew than this is a broken clock, not skew.
	MaxLeeway = 5 * time.Minute
	// DefaultCacheSize is how many verified tokens a Verifier remembers.
	DefaultCacheSize = 10000

	// maxTokenBytes rejects absurd inputs before hashing or parsing them.
	maxTokenBytes = 16 << 10
)

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Keys is required and must hold at least one valid Ed25519 key; a token's
	// kid header selects the key.
	Keys keyfile.KeySet
	// Issuer is required: the iss every accepted token must carry.
	Issuer string
	// Leeway is optional, default DefaultLeeway (30s); must be in [0, MaxLeeway].
	// Zero means the default.
	Leeway time.Duration
	// CacheSize is optional, default DefaultCacheSize (10000): how many
	// verified tokens are remembered (by SHA-256 of the token) until exp, to
	// skip the ~100µs Ed25519 verification on repeat requests. Negative
	// disables the cache.
	CacheSize int
	// Now is optional, default time.Now; tests inject a clock.
	Now func() time.Time
}

// Validate reports every problem with c at once, each naming its field.
func (c VerifierConfig) Validate() error {
	var errs []error
	if len(c.Keys.Keys) == 0 {
		errs = append(errs, errors.New("keys: at least one key is required"))
	} else if err := c.Keys.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("keys: %w", err))
	}
	if c.Issuer == "" {
		errs = append(errs, errors.New("issuer: required"))
	}
	if c.Leeway < 0 || c.Leeway > MaxLeeway {
		errs = append(errs, fmt.Errorf("leeway: %s is outside [0, %s]", c.Leeway, MaxLeeway))
	}
	return errors.Join(errs...)
}

// Verifier checks tokens issued by one issuer against a fixed key set. It is
// safe for concurrent use.
type Verifier struct {
	keys   map[string]ed25519.PublicKey // by keyfile.KeyID
	parser *jwt.Parser
	leeway time.Duration
	now    func() time.Time
	cache  *tokenCache // nil when disabled
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("auth: verifier config: %w", err)
	}
	v := &Verifier{
		keys:   make(map[string]ed25519.PublicKey, len(cfg.Keys.Keys)),
		leeway: cfg.Leeway,
		now:    cfg.Now,
	}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	}
	if v.now == nil {
		v.now = time.Now
	}
	for _, k := range cfg.Keys.Keys {
		// Validate above guarantees Lookup succeeds; decoding once here keeps
		// base64 off the hot path.
		if pub, ok := cfg.Keys.Lookup(k.KeyID); ok {
			v.keys[k.KeyID] = pub
		}
	}
	switch {
	case cfg.CacheSize == 0:
		v.cache = newTokenCache(DefaultCacheSize)
	case cfg.CacheSize > 0:
		v.cache = newTokenCache(cfg.CacheSize)
	}
	v.parser = jwt.NewParser(
		// The allow-list is what stops "none", HS256-with-the-public-key and
		// every other algorithm-confusion trick; keyFor double-checks it.
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.leeway),
		jwt.WithTimeFunc(v.now),
		jwt.WithStrictDecoding(),
	)
	return v, nil
}

// Verify checks token's signature, algorithm, key id, issuer, expiry and
// claim formats and returns its claims. Errors wrap ErrExpiredToken when the
// token is genuine but past exp (plus leeway), and ErrInvalidToken otherwise.
//
// Verified tokens are cached until they expire; a cache hit skips signature
// verification but never the expiry check.
func (v *Verifier) Verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, fmt.Errorf("%w: empty token", ErrInvalidToken)
	}
	if len(token) > maxTokenBytes {
		return Claims{}, fmt.Errorf("%w: token is %d bytes, limit %d", ErrInvalidToken, len(token), maxTokenBytes)
	}
	now := v.now()
	var cacheKey [sha256.Size]byte
	if v.cache != nil {
		cacheKey = sha256.Sum256([]byte(token))
		if c, hit, expired := v.cache.get(cacheKey, now); hit {
			if expired {
				return Claims{}, expiredError(c.ExpiresAt)
			}
			return c, nil
		}
	}

	var tc tokenClaims
	if _, err := v.parser.ParseWithClaims(token, &tc, v.keyFor); err != nil {
		if onlyExpired(err) && tc.ExpiresAt != nil {
			return Claims{}, expiredError(tc.ExpiresAt.Time)
		}
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if tc.AuthTime != nil && tc.AuthTime.After(now.Add(v.leeway)) {
		return Claims{}, fmt.Errorf("%w: auth_time %s is in the future", ErrInvalidToken, tc.AuthTime.UTC().Format(time.RFC3339))
	}

	c := tc.claims()
	if v.cache != nil {
		v.cache.put(cacheKey, c, c.ExpiresAt.Add(v.leeway), now)
	}
	return c, nil
}

// keyFor is the jwt.Keyfunc: the kid header must name a key in the set.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodEd25519); !ok {
		return nil, fmt.Errorf("alg %q is not accepted", t.Method.Alg())
	}
	// RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New(`"crit" header is not supported`)
	}
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, errors.New(`"kid" header is missing`)
	}
	key, ok := v.keys[kid]
	if !ok {
		return nil, fmt.Errorf("kid %.80q is not in the key set", kid)
	}
	return key, nil
}

// errMalformedClaims marks tokenClaims.Validate failures.
var errMalformedClaims = errors.New("malformed claims")

// notExpiryProblems are claim failures that make a token invalid even when it
// is also expired: "expired" tells the client to get a fresh token, which
// would not help.
var notExpiryProblems = []error{
	jwt.ErrTokenMalformed,
	jwt.ErrTokenUnverifiable,
	jwt.ErrTokenSignatureInvalid,
	jwt.ErrTokenInvalidIssuer,
	jwt.ErrTokenInvalidAudience,
	jwt.ErrTokenRequiredClaimMissing,
	jwt.ErrTokenNotValidYet,
	jwt.ErrTokenUsedBeforeIssued,
	errMalformedClaims,
}

// onlyExpired reports whether err says the token is expired and nothing else
// is wrong with it. The jwt parser validates claims only after the signature
// checks out, so an expired error always concerns a genuine token.
func onlyExpired(err error) bool {
	if !errors.Is(err, jwt.ErrTokenExpired) {
		return false
	}
	for _, other := range notExpiryProblems {
		if errors.Is(err, other) {
			return false
		}
	}
	return true
}

func expiredError(exp time.Time) error {
	return fmt.Errorf("%w: expired at %s", ErrExpiredToken, exp.UTC().Format(time.RFC3339))
}

// Validate implements jwt.ClaimsValidator: the CompanyOS-specific claims must
// be well formed, exactly as IssueRequest.Validate demands.
func (c tokenClaims) Validate() error {
	var errs []error
	if err := validatePrincipal(c.Subject); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, validateTenants(c.Tenants)...)
	errs = append(errs, validateRoles(c.Roles)...)
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return fmt.Errorf("%w: %s", errMalformedClaims, strings.Join(msgs, "; "))
}

// claims converts a validated payload; times are UTC.
func (c tokenClaims) claims() Claims {
	out := Claims{
		Principal: c.Subject,
		Tenants:   c.Tenants,
		Roles:     c.Roles,
		MFA:       slices.Contains(c.AMR, amrMFA),
		ID:        c.ID,
		Issuer:    c.Issuer,
	}
	if c.AuthTime != nil {
		out.AuthTime = c.AuthTime.UTC()
	}
	if c.IssuedAt != nil {
		out.IssuedAt = c.IssuedAt.UTC()
	}
	if c.ExpiresAt != nil {
		out.ExpiresAt = c.ExpiresAt.UTC()
	}
	return out
}
