package events

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// A consistency token names a point in one tenant's chain: "the receipt with
// this seq, and everything before it". A reader that has applied the tenant up
// to that seq can answer with read-your-writes. It is opaque to clients.
const tokenPrefix = "cos1:"

// ErrBadToken is returned for a malformed consistency token.
var ErrBadToken = errors.New("events: malformed consistency token")

// ConsistencyToken encodes (tenant, seq).
func ConsistencyToken(tenant string, seq uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(tokenPrefix + tenant + ":" + strconv.FormatUint(seq, 10)))
}

// ParseConsistencyToken decodes a token made by ConsistencyToken.
func ParseConsistencyToken(tok string) (tenant string, seq uint64, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !strings.HasPrefix(string(raw), tokenPrefix) {
		return "", 0, ErrBadToken
	}
	rest := strings.TrimPrefix(string(raw), tokenPrefix)
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return "", 0, ErrBadToken
	}
	seq, err = strconv.ParseUint(rest[i+1:], 10, 64)
	if err != nil {
		return "", 0, ErrBadToken
	}
	return rest[:i], seq, nil
}
