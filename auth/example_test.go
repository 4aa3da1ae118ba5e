package auth_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"time"

	"github.com/companyos/companyos/auth"
)

// An issuer mints a token, an HTTP handler reads it from the request and the
// verifier turns it into Claims.
func Example() {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	issuer := auth.NewIssuer("companyos", key)
	token, err := issuer.Issue(auth.IssueRequest{
		Principal: "user:alice",
		Tenants:   []string{"acme"},
		Roles:     []string{"admin"},
		MFA:       true,
		TTL:       time.Hour,
	})
	if err != nil {
		panic(err)
	}

	verifier, err := auth.NewVerifier(auth.VerifierConfig{Keys: issuer.KeySet(), Issuer: "companyos"})
	if err != nil {
		panic(err)
	}

	r, _ := http.NewRequest(http.MethodGet, "/v1/entities", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	bearer, err := auth.BearerToken(r)
	if err != nil {
		panic(err)
	}
	claims, err := verifier.Verify(bearer)
	if err != nil {
		panic(err)
	}
	fmt.Println(claims.Principal, claims.Tenants, claims.Roles, claims.MFA)
	fmt.Println("acme:", claims.AllowsTenant("acme"), "globex:", claims.AllowsTenant("globex"))
	// Output:
	// user:alice [acme] [admin] true
	// acme: true globex: false
}
