package oauthhttp

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tsidp/tsidp/pkg/issue"
)

func TestReadForm(t *testing.T) {
	tests := []struct {
		name, ct, body string
		status         int // 0: accepted
		desc           string
	}{
		{"ok", "application/x-www-form-urlencoded", "a=1&b=2", 0, ""},
		{"ok with charset", "application/x-www-form-urlencoded; charset=utf-8", "a=1", 0, ""},
		{"json", "application/json", `{"a":1}`, 400, "Content-Type must be"},
		{"twice", "application/x-www-form-urlencoded", "a=1&a=2", 400, `parameter "a" is given more than once`},
		{"too large", "application/x-www-form-urlencoded", "a=" + strings.Repeat("x", MaxFormBytes), 413, "request body is over"},
		{"malformed", "application/x-www-form-urlencoded", "a=%zz", 400, "malformed form body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/x?q=1", strings.NewReader(tt.body))
			r.Header.Set("Content-Type", tt.ct)
			form, ref := ReadForm(httptest.NewRecorder(), r)
			if tt.status == 0 {
				if ref != nil || form.Get("a") != "1" || form.Has("q") {
					t.Errorf("form %v, %v; want the body's parameters only", form, ref)
				}
				return
			}
			if ref == nil || ref.Status != tt.status || ref.Code != "invalid_request" || !strings.Contains(ref.Description, tt.desc) {
				t.Errorf("refusal %+v, want %d %q", ref, tt.status, tt.desc)
			}
		})
	}
}

func TestRefuse(t *testing.T) {
	for _, tt := range []struct {
		ref       *issue.Refusal
		challenge string
		header    string
	}{
		{&issue.Refusal{Status: 401, Code: "invalid_client", Description: "who?"}, `Basic realm="tsidp"`, "WWW-Authenticate"},
		{&issue.Refusal{Status: 503, Code: "temporarily_unavailable", Description: "later"}, "", "Retry-After"},
	} {
		rec := httptest.NewRecorder()
		Refuse(rec, tt.ref, tt.challenge)
		var m map[string]string
		json.Unmarshal(rec.Body.Bytes(), &m)
		if rec.Code != tt.ref.Status || m["error"] != tt.ref.Code || m["error_description"] != tt.ref.Description ||
			rec.Header().Get(tt.header) == "" || rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("%d %v %v", rec.Code, m, rec.Header())
		}
	}
}
