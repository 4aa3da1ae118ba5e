package httpx

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/companyos/companyos/auth"
)

// StepUp is the step-up authentication rule for high-risk actions: the
// token must carry an MFA login no older than MaxAge. The policy bundle
// states it (data.companyos.step_up) and enforces it again when deciding;
// checking at the edge lets the API answer with a standard challenge
// (RFC 9470) before anything is appended.
type StepUp struct {
	Actions []string
	MaxAge  time.Duration
}

// Required reports whether c must step up to perform action at now.
func (s StepUp) Required(c auth.Claims, action string, now time.Time) bool {
	if !slices.Contains(s.Actions, action) {
		return false
	}
	return !c.MFA || c.AuthTime.IsZero() || now.Sub(c.AuthTime) > s.MaxAge
}

// Challenge answers 401 with an RFC 9470 step-up challenge
// (WWW-Authenticate: Bearer error="insufficient_user_authentication",
// acr_values="mfa", max_age=…) and the mfa_required obligation in the body.
func (s StepUp) Challenge(w http.ResponseWriter, action string) {
	secs := int64(s.MaxAge / time.Second)
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(
		`Bearer error="insufficient_user_authentication", error_description="%s requires a multi-factor login within the last %d seconds", acr_values="mfa", max_age=%d`,
		action, secs, secs))
	p := NewProblem(http.StatusUnauthorized, "step-up-required",
		fmt.Sprintf("%s is a high-risk action: authenticate again with MFA (token amr must contain \"mfa\", auth_time within %d seconds)", action, secs))
	p.Obligations, _ = json.Marshal([]map[string]any{{"type": "mfa_required", "params": map[string]any{"max_age_seconds": secs}}})
	WriteProblem(w, p)
}
