// Package oauthhttp is what every OAuth endpoint of tsidp does the same
// way: read a form body strictly and within bounds, answer RFC 6749 JSON
// errors, and turn an issue.Refusal into the answer a client expects.
package oauthhttp

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/issue"
)

// MaxFormBytes bounds a form body.
const MaxFormBytes = 16 << 10

// ReadForm reads an application/x-www-form-urlencoded body of at most
// MaxFormBytes. Only the body counts (query parameters are ignored), and a
// parameter given twice is an error (RFC 6749 §3.2).
func ReadForm(w http.ResponseWriter, r *http.Request) (url.Values, *issue.Refusal) {
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/x-www-form-urlencoded" {
		return nil, issue.InvalidRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			ref := issue.InvalidRequest(fmt.Sprintf("request body is over %d bytes", MaxFormBytes))
			ref.Status = http.StatusRequestEntityTooLarge
			return nil, ref
		}
		return nil, issue.InvalidRequest("malformed form body")
	}
	if ref := Single(r.PostForm); ref != nil {
		return nil, ref
	}
	return r.PostForm, nil
}

// Single refuses parameters given more than once.
func Single(v url.Values) *issue.Refusal {
	for k, vs := range v {
		if len(vs) > 1 {
			return issue.InvalidRequest(fmt.Sprintf("parameter %q is given more than once", k))
		}
	}
	return nil
}

// Refuse answers a refusal as RFC 6749 §5.2 JSON, with WWW-Authenticate
// for a client that failed to authenticate (scheme given by challenge,
// e.g. `Basic realm="tsidp"`) and Retry-After while something is down.
func Refuse(w http.ResponseWriter, ref *issue.Refusal, challenge string) {
	switch ref.Status {
	case http.StatusUnauthorized:
		if challenge != "" {
			w.Header().Set("WWW-Authenticate", challenge)
		}
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	WriteError(w, ref.Status, ref.Code, ref.Description)
}

// WriteError writes an RFC 6749 §5.2 JSON error.
func WriteError(w http.ResponseWriter, status int, code, desc string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	b := make([]byte, 0, 64+len(desc))
	b = append(b, `{"error":`...)
	b = claims.AppendQuoted(b, code)
	b = append(b, `,"error_description":`...)
	b = claims.AppendQuoted(b, desc)
	b = append(b, "}\n"...)
	w.Write(b)
}
