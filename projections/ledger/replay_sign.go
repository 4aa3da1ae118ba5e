package ledger

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"

	"github.com/companyos/companyos/events"
	"github.com/companyos/companyos/internal/keyfile"
)

// ReplayReportPayloadType is the DSSE payloadType of a signed replay report
// (SignReplayReport). The payload is the report's JSON.
const ReplayReportPayloadType = "application/vnd.companyos.replay-report.v1+json"

// SignReplayReport encodes rep as JSON and wraps it in a DSSE envelope
// (payloadType ReplayReportPayloadType) signed with key — the ledger's
// checkpoint key, so that auditors need one public key for both. The key id
// is keyfile.KeyID of its public key.
func SignReplayReport(rep *ReplayReport, key ed25519.PrivateKey) ([]byte, error) {
	payload, err := json.Marshal(rep)
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: encode report: %w", err)
	}
	pub := key.Public().(ed25519.PublicKey)
	env := events.Envelope{PayloadType: ReplayReportPayloadType, Payload: payload, Signatures: []events.Signature{{
		KeyID: keyfile.KeyID(pub), Sig: ed25519.Sign(key, events.PAE(ReplayReportPayloadType, payload)),
	}}}
	b, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("ledger: replay: encode report envelope: %w", err)
	}
	return append(b, '\n'), nil
}

// OpenReplayReport verifies a signed replay report against pub and decodes
// it.
func OpenReplayReport(b []byte, pub ed25519.PublicKey) (*ReplayReport, error) {
	var env events.Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("ledger: replay: report envelope: %w: %v", events.ErrBadEnvelope, err)
	}
	if env.PayloadType != ReplayReportPayloadType {
		return nil, fmt.Errorf("ledger: replay: report envelope: %w: payloadType %q", events.ErrBadEnvelope, env.PayloadType)
	}
	id := keyfile.KeyID(pub)
	msg := events.PAE(env.PayloadType, env.Payload)
	for _, s := range env.Signatures {
		if s.KeyID != id {
			continue
		}
		if !ed25519.Verify(pub, msg, s.Sig) {
			return nil, fmt.Errorf("ledger: replay: report: %w: keyid %s", events.ErrBadSignature, id)
		}
		var rep ReplayReport
		if err := json.Unmarshal(env.Payload, &rep); err != nil {
			return nil, fmt.Errorf("ledger: replay: report payload: %w", err)
		}
		return &rep, nil
	}
	return nil, fmt.Errorf("ledger: replay: report: %w: want keyid %s", events.ErrUnknownKey, id)
}
