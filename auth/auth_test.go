package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/companyos/companyos/internal/keyfile"
)

const testIssuer = "companyos-test"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable time source shared by an issuer and a verifier.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time)         { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func (c *clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

type fixture struct {
	key    ed25519.PrivateKey
	issuer *Issuer
	clock  *clock
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: t0}
	iss := NewIssuer(testIssuer, key)
	iss.now = clk.Now
	return &fixture{key: key, issuer: iss, clock: clk}
}

func (f *fixture) verifier(t testing.TB, mutate ...func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{Keys: f.issuer.KeySet(), Issuer: testIssuer, Now: f.clock.Now}
	for _, m := range mutate {
		m(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fixture) issue(t testing.TB, r IssueRequest) string {
	t.Helper()
	tok, err := f.issuer.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) kid() string { return keyfile.KeyID(f.key.Public().(ed25519.PublicKey)) }

// validPayload is a payload the verifier accepts, for tests that sign by hand.
func validPayload() jwt.MapClaims {
	return jwt.MapClaims{
		"iss":     testIssuer,
		"sub":     "user:alice",
		"tenants": []string{"acme"},
		"iat":     t0.Unix(),
		"exp":     t0.Add(time.Hour).Unix(),
		"jti":     "j1",
	}
}

func sign(t testing.TB, method jwt.SigningMethod, key any, header map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t)
	tests := []struct {
		name string
		req  IssueRequest
		want Claims
	}{
		{
			name: "minimal",
			req:  IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour},
			want: Claims{Principal: "user:alice", Tenants: []string{"acme"}},
		},
		{
			name: "roles and mfa",
			req: IssueRequest{Principal: "user:bob@example.com", Tenants: []string{"acme", "globex-2"},
				Roles: []string{"admin", "billing_reader"}, MFA: true, TTL: 15 * time.Minute},
			want: Claims{Principal: "user:bob@example.com", Tenants: []string{"acme", "globex-2"},
				Roles: []string{"admin", "billing_reader"}, MFA: true},
		},
		{
			name: "wildcard tenant",
			req:  IssueRequest{Principal: "service:ingest/worker-1", Tenants: []string{"*"}, TTL: MaxTTL},
			want: Claims{Principal: "service:ingest/worker-1", Tenants: []string{"*"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := f.issue(t, tt.req)
			got, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.ID == "" {
				t.Error("ID (jti) is empty")
			}
			want := tt.want
			want.Issuer = testIssuer
			want.AuthTime, want.IssuedAt, want.ExpiresAt = t0, t0, t0.Add(tt.req.TTL)
			want.ID = got.ID
			if !reflect.DeepEqual(got, want) {
				t.Errorf("claims\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestIssueHeaderAndUniqueIDs(t *testing.T) {
	f := newFixture(t)
	req := IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour}
	a, b := f.issue(t, req), f.issue(t, req)
	if a == b {
		t.Fatal("two tokens issued at the same instant are identical; jti is not random")
	}
	tok, _, err := jwt.NewParser().ParseUnverified(a, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Header["alg"]; got != "EdDSA" {
		t.Errorf("alg = %v, want EdDSA", got)
	}
	if got := tok.Header["kid"]; got != f.kid() {
		t.Errorf("kid = %v, want %v", got, f.kid())
	}
	mc := tok.Claims.(jwt.MapClaims)
	if _, ok := mc["amr"]; ok {
		t.Errorf("amr present without MFA: %v", mc["amr"])
	}
}

func TestVerifyExpired(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, func(c *VerifierConfig) { c.CacheSize = -1 })
	tok := f.issue(t, IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour})

	tests := []struct {
		name    string
		at      time.Time
		wantErr error
	}{
		{"before exp", t0.Add(59 * time.Minute), nil},
		{"within leeway", t0.Add(time.Hour + DefaultLeeway - time.Second), nil},
		{"at exp plus leeway", t0.Add(time.Hour + DefaultLeeway), ErrExpiredToken},
		{"long after", t0.Add(48 * time.Hour), ErrExpiredToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.clock.Set(tt.at)
			_, err := v.Verify(tok)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(err, ErrInvalidToken) {
				t.Errorf("expired token also reported as invalid: %v", err)
			}
		})
	}
}

func TestVerifyRejectsInvalid(t *testing.T) {
	f := newFixture(t)
	pub := f.key.Public().(ed25519.PublicKey)
	good := f.issue(t, IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour})
	parts := strings.Split(good, ".")

	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	kidHeader := map[string]any{"kid": f.kid()}
	with := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := validPayload()
		edit(c)
		return c
	}

	tamperedPayload := func() string {
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		m["sub"] = "user:mallory"
		raw, _ = json.Marshal(m)
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString(raw) + "." + parts[2]
	}
	tamperedSignature := func() string {
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		sig[0] ^= 0x01
		return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	expiredWrongIssuer := with(func(c jwt.MapClaims) {
		c["iss"] = "someone-else"
		c["exp"] = t0.Add(-time.Hour).Unix()
		c["iat"] = t0.Add(-2 * time.Hour).Unix()
	})

	tests := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"garbage", "not-a-jwt"},
		{"two segments", parts[0] + "." + parts[1]},
		{"oversized", strings.Repeat("a", maxTokenBytes+1)},
		{"wrong key, our kid", sign(t, jwt.SigningMethodEdDSA, otherKey, kidHeader, validPayload())},
		{"unknown kid", sign(t, jwt.SigningMethodEdDSA, otherKey,
			map[string]any{"kid": keyfile.KeyID(otherKey.Public().(ed25519.PublicKey))}, validPayload())},
		{"missing kid", sign(t, jwt.SigningMethodEdDSA, f.key, nil, validPayload())},
		{"tampered payload", tamperedPayload()},
		{"tampered signature", tamperedSignature()},
		{"signature stripped", parts[0] + "." + parts[1] + "."},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, kidHeader, validPayload())},
		{"HS256 keyed with raw public key", sign(t, jwt.SigningMethodHS256, []byte(pub), kidHeader, validPayload())},
		{"HS256 keyed with key-set base64", sign(t, jwt.SigningMethodHS256,
			[]byte(base64.StdEncoding.EncodeToString(pub)), kidHeader, validPayload())},
		{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, kidHeader, validPayload())},
		{"crit header", sign(t, jwt.SigningMethodEdDSA, f.key,
			map[string]any{"kid": f.kid(), "crit": []string{"exp"}}, validPayload())},
		{"wrong issuer", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["iss"] = "someone-else" }))},
		{"missing issuer", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { delete(c, "iss") }))},
		{"missing exp", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { delete(c, "exp") }))},
		{"expired and wrong issuer", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader, expiredWrongIssuer)},
		{"not yet valid", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["nbf"] = t0.Add(10 * time.Minute).Unix() }))},
		{"issued in the future", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["iat"] = t0.Add(10 * time.Minute).Unix() }))},
		{"auth_time in the future", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["auth_time"] = t0.Add(10 * time.Minute).Unix() }))},
		{"bad principal", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["sub"] = "alice" }))},
		{"no tenants", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { delete(c, "tenants") }))},
		{"wildcard mixed with tenant", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["tenants"] = []string{"*", "acme"} }))},
		{"bad tenant", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["tenants"] = []string{"Acme"} }))},
		{"bad role", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["roles"] = []string{"Admin!"} }))},
		{"tenants wrong type", sign(t, jwt.SigningMethodEdDSA, f.key, kidHeader,
			with(func(c jwt.MapClaims) { c["tenants"] = "acme" }))},
	}
	for _, cached := range []bool{false, true} {
		v := f.verifier(t, func(c *VerifierConfig) {
			if !cached {
				c.CacheSize = -1
			}
		})
		// Prime the cache with the genuine token so tampered variants cannot
		// ride on its entry.
		if _, err := v.Verify(good); err != nil {
			t.Fatalf("genuine token: %v", err)
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/cached=%v", tt.name, cached), func(t *testing.T) {
				got, err := v.Verify(tt.token)
				if !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("err = %v, want ErrInvalidToken (claims %+v)", err, got)
				}
				if !cached {
					t.Log(err)
				}
				if errors.Is(err, ErrExpiredToken) {
					t.Errorf("also wraps ErrExpiredToken: %v", err)
				}
				if !reflect.DeepEqual(got, Claims{}) {
					t.Errorf("returned claims with an error: %+v", got)
				}
			})
		}
	}
}

func TestVerifyCache(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t)
	tok := f.issue(t, IssueRequest{Principal: "user:alice", Tenants: []string{"acme"},
		Roles: []string{"admin"}, MFA: true, TTL: time.Hour})

	first, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if n := v.cache.len(); n != 1 {
		t.Fatalf("cache len = %d after first verify, want 1", n)
	}

	// Mutating what Verify returned must not poison the cache.
	first.Tenants[0], first.Roles[0] = "globex", "root"
	f.clock.Advance(30 * time.Minute)
	hit, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{Principal: "user:alice", Tenants: []string{"acme"}, Roles: []string{"admin"}, MFA: true,
		AuthTime: t0, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), ID: hit.ID, Issuer: testIssuer}
	if !reflect.DeepEqual(hit, want) {
		t.Errorf("cache hit\n got %+v\nwant %+v", hit, want)
	}

	// Prove the hit really came from the cache: a verifier whose key set no
	// longer matches would reject a cold verification.
	delete(v.keys, f.kid())
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("cache hit path verified the signature again: %v", err)
	}

	f.clock.Set(t0.Add(time.Hour + DefaultLeeway))
	if _, err := v.Verify(tok); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("expired cached token: err = %v, want ErrExpiredToken", err)
	}
	if n := v.cache.len(); n != 0 {
		t.Errorf("cache len = %d after expiry, want 0", n)
	}
}

func TestVerifyCacheBounded(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, func(c *VerifierConfig) { c.CacheSize = 3 })
	var tokens []string
	for i := range 10 {
		ttl := time.Duration(i+1) * time.Minute
		tokens = append(tokens, f.issue(t, IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: ttl}))
	}
	for _, tok := range tokens {
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
		if n := v.cache.len(); n > 3 {
			t.Fatalf("cache len = %d, bound is 3", n)
		}
	}
	// Once the short-lived entries expire, eviction prefers them, and every
	// token still verifies or expires on its own terms.
	f.clock.Advance(5*time.Minute + DefaultLeeway)
	for i, tok := range tokens {
		_, err := v.Verify(tok)
		wantExpired := i < 5
		if got := errors.Is(err, ErrExpiredToken); got != wantExpired || (!wantExpired && err != nil) {
			t.Errorf("token %d: err = %v, want expired=%v", i, err, wantExpired)
		}
	}
}

func TestVerifyConcurrent(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t, func(c *VerifierConfig) { c.CacheSize = 4 })
	var tokens []string
	for i := range 8 {
		tokens = append(tokens, f.issue(t, IssueRequest{Principal: fmt.Sprintf("user:u%d", i), Tenants: []string{"acme"}, TTL: time.Hour}))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				tok := tokens[(g+i)%len(tokens)]
				c, err := v.Verify(tok)
				if err != nil {
					t.Error(err)
					return
				}
				if want := fmt.Sprintf("user:u%d", (g+i)%len(tokens)); c.Principal != want {
					t.Errorf("principal = %q, want %q", c.Principal, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestVerifierConfigValidate(t *testing.T) {
	f := newFixture(t)
	keys := f.issuer.KeySet()
	aliased := keyfile.KeySet{Keys: []keyfile.PublicKey{{KeyID: "ed25519:00", Alg: keyfile.AlgEd25519, PublicKey: keys.Keys[0].PublicKey}}}
	tests := []struct {
		name      string
		cfg       VerifierConfig
		wantField []string // substrings each error message must contain; none means valid
	}{
		{"valid", VerifierConfig{Keys: keys, Issuer: testIssuer}, nil},
		{"valid, cache disabled, leeway max", VerifierConfig{Keys: keys, Issuer: testIssuer, CacheSize: -1, Leeway: MaxLeeway}, nil},
		{"empty", VerifierConfig{}, []string{"keys:", "issuer:"}},
		{"aliased key id", VerifierConfig{Keys: aliased, Issuer: testIssuer}, []string{"keys:", "keyid"}},
		{"negative leeway", VerifierConfig{Keys: keys, Issuer: testIssuer, Leeway: -time.Second}, []string{"leeway:"}},
		{"huge leeway", VerifierConfig{Keys: keys, Issuer: testIssuer, Leeway: time.Hour}, []string{"leeway:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantField) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if _, err := NewVerifier(tt.cfg); err != nil {
					t.Fatalf("NewVerifier: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("want error")
			}
			for _, s := range tt.wantField {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if _, err := NewVerifier(tt.cfg); err == nil {
				t.Error("NewVerifier accepted an invalid config")
			}
		})
	}
}

func TestIssueRequestValidate(t *testing.T) {
	ok := IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour}
	with := func(edit func(*IssueRequest)) IssueRequest { r := ok; edit(&r); return r }
	tests := []struct {
		name string
		req  IssueRequest
		want []string // every message must appear; empty means valid
	}{
		{"valid", ok, nil},
		{"valid wildcard with roles", with(func(r *IssueRequest) { r.Tenants = []string{"*"}; r.Roles = []string{"admin", "ops-2"} }), nil},
		{"valid max ttl", with(func(r *IssueRequest) { r.TTL = MaxTTL }), nil},
		{"valid permission-style role", with(func(r *IssueRequest) { r.Roles = []string{"metering.write"} }), nil},
		{"zero value", IssueRequest{}, []string{"principal: required", "tenants: at least one", "ttl: must be positive"}},
		{"principal without kind", with(func(r *IssueRequest) { r.Principal = "alice" }), []string{`principal: "alice"`}},
		{"principal uppercase kind", with(func(r *IssueRequest) { r.Principal = "User:alice" }), []string{"principal:"}},
		{"principal with space", with(func(r *IssueRequest) { r.Principal = "user:al ice" }), []string{"principal:"}},
		{"bad tenant", with(func(r *IssueRequest) { r.Tenants = []string{"acme", "-bad"} }), []string{`tenants[1]: "-bad"`}},
		{"tenant too long", with(func(r *IssueRequest) { r.Tenants = []string{strings.Repeat("a", 64)} }), []string{"tenants[0]:"}},
		{"wildcard not alone", with(func(r *IssueRequest) { r.Tenants = []string{"acme", "*"} }), []string{`tenants: "*" must be the only entry`}},
		{"negative ttl", with(func(r *IssueRequest) { r.TTL = -time.Second }), []string{"ttl: must be positive"}},
		{"ttl too long", with(func(r *IssueRequest) { r.TTL = MaxTTL + time.Second }), []string{"ttl:", "exceeds the maximum"}},
		{"bad role", with(func(r *IssueRequest) { r.Roles = []string{"ok", "Not_OK"} }), []string{`roles[1]: "Not_OK"`}},
		{"role too long", with(func(r *IssueRequest) { r.Roles = []string{"r" + strings.Repeat("x", 64)} }), []string{"roles[0]:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("want error")
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestIssueErrors(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	good := IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour}
	tests := []struct {
		name   string
		issuer *Issuer
		req    IssueRequest
		want   string
	}{
		{"no name", NewIssuer("", key), good, "issuer name"},
		{"short key", NewIssuer(testIssuer, key[:10]), good, "Ed25519 private key"},
		{"invalid request", NewIssuer(testIssuer, key), IssueRequest{}, "principal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.issuer.Issue(tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
			if tok != "" {
				t.Errorf("token returned with error: %q", tok)
			}
		})
	}
	if ks := NewIssuer(testIssuer, key[:10]).KeySet(); len(ks.Keys) != 0 {
		t.Errorf("KeySet of a malformed key = %+v, want empty", ks)
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		want    string
		wantErr error
	}{
		{"absent", nil, "", ErrMissingToken},
		{"empty", []string{""}, "", ErrMissingToken},
		{"blank", []string{"   "}, "", ErrMissingToken},
		{"scheme only", []string{"Bearer"}, "", ErrMissingToken},
		{"scheme and space", []string{"Bearer   "}, "", ErrMissingToken},
		{"canonical", []string{"Bearer abc.def.ghi"}, "abc.def.ghi", nil},
		{"lowercase scheme", []string{"bearer abc.def.ghi"}, "abc.def.ghi", nil},
		{"shouting scheme", []string{"BEARER abc.def.ghi"}, "abc.def.ghi", nil},
		{"extra whitespace", []string{"  Bearer \t abc.def-_~+/ghi==  "}, "abc.def-_~+/ghi==", nil},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, "", ErrInvalidToken},
		{"no separator", []string{"Bearerabc.def.ghi"}, "", ErrInvalidToken},
		{"token with space", []string{"Bearer abc def"}, "", ErrInvalidToken},
		{"token with comma", []string{"Bearer abc,def"}, "", ErrInvalidToken},
		{"only padding", []string{"Bearer ==="}, "", ErrInvalidToken},
		{"padding in the middle", []string{"Bearer ab=c"}, "", ErrInvalidToken},
		{"two headers", []string{"Bearer a", "Bearer b"}, "", ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := http.NewRequest(http.MethodGet, "http://example.test/", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, err := BearerToken(r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("token = %q, want %q", got, tt.want)
			}
		})
	}
	if _, err := BearerToken(nil); !errors.Is(err, ErrMissingToken) {
		t.Errorf("nil request: err = %v, want ErrMissingToken", err)
	}
}

func TestClaimsContext(t *testing.T) {
	if _, ok := FromContext(context.Background()); ok {
		t.Fatal("empty context has claims")
	}
	want := Claims{Principal: "user:alice", Tenants: []string{"acme"}}
	got, ok := FromContext(WithClaims(context.Background(), want))
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("FromContext = %+v, %v; want %+v", got, ok, want)
	}
}

func TestAllowsTenant(t *testing.T) {
	tests := []struct {
		tenants []string
		tenant  string
		want    bool
	}{
		{[]string{"acme", "globex"}, "globex", true},
		{[]string{"acme"}, "globex", false},
		{[]string{"*"}, "globex", true},
		{[]string{"*"}, "", false},
		{nil, "acme", false},
		{[]string{"acme"}, "ACME", false},
	}
	for _, tt := range tests {
		if got := (Claims{Tenants: tt.tenants}).AllowsTenant(tt.tenant); got != tt.want {
			t.Errorf("Claims{Tenants: %q}.AllowsTenant(%q) = %v, want %v", tt.tenants, tt.tenant, got, tt.want)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, bc := range []struct {
		name      string
		cacheSize int
	}{
		{"cold", -1},
		{"cached", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b)
			v := f.verifier(b, func(c *VerifierConfig) { c.CacheSize = bc.cacheSize })
			tok := f.issue(b, IssueRequest{Principal: "user:alice", Tenants: []string{"acme", "globex"},
				Roles: []string{"admin"}, MFA: true, TTL: time.Hour})
			if _, err := v.Verify(tok); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerifyCachedParallel(b *testing.B) {
	f := newFixture(b)
	v := f.verifier(b)
	tok := f.issue(b, IssueRequest{Principal: "user:alice", Tenants: []string{"acme"}, TTL: time.Hour})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Verify(tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
