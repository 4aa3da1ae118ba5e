package httpx

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/companyos/companyos/auth"
)

// TokenVerifier authenticates bearer tokens (*auth.Verifier implements it).
type TokenVerifier interface {
	Verify(token string) (auth.Claims, error)
}

// Authenticate reads and verifies the request's bearer token. On failure it
// writes a 401 problem with an RFC 6750 WWW-Authenticate challenge and
// returns false.
func Authenticate(w http.ResponseWriter, r *http.Request, v TokenVerifier) (auth.Claims, bool) {
	tok, err := auth.BearerToken(r)
	if err == nil {
		var c auth.Claims
		if c, err = v.Verify(tok); err == nil {
			return c, true
		}
	}
	if errors.Is(err, auth.ErrMissingToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="companyos"`)
	} else {
		w.Header().Set("WWW-Authenticate", `Bearer realm="companyos", error="invalid_token", error_description=`+strconv.Quote(err.Error()))
	}
	p := NewProblem(http.StatusUnauthorized, "unauthorized", err.Error())
	p.Errors = []FieldError{{Field: "header.Authorization", Detail: err.Error()}}
	WriteProblem(w, p)
	return auth.Claims{}, false
}
