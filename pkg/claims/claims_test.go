package claims

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tsidp/tsidp/pkg/identity"
)

func TestAppendQuotedMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quo"te`, `back\slash`, "new\nline", "tab\t", "\b\f", "\x00\x01\x1f", "<script>&",
		"héllo wörld", "emoji 🎉", "\u2028\u2029", "bad \xff utf8", "\xed\xa0\x80",
	} {
		want, _ := json.Marshal(s)
		if got := string(AppendQuoted(nil, s)); got != string(want) {
			t.Errorf("AppendQuoted(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendQuoted(f *testing.F) {
	f.Add("hello")
	f.Add("\xff\u2028<>")
	f.Fuzz(func(t *testing.T, s string) {
		// Same decoded value as encoding/json, and as safe to embed.
		got := AppendQuoted(nil, s)
		want, _ := json.Marshal(s)
		var g, w string
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("AppendQuoted(%q) = %s: not JSON: %v", s, got, err)
		}
		json.Unmarshal(want, &w)
		if g != w {
			t.Fatalf("AppendQuoted(%q) decodes to %q, encoding/json to %q", s, g, w)
		}
		if strings.ContainsAny(string(got), "<>&\u2028\u2029") {
			t.Fatalf("AppendQuoted(%q) = %s: unescaped HTML-unsafe character", s, got)
		}
	})
}

func person() *identity.Identity {
	return &identity.Identity{
		Subject: "user:42", UserID: "42", LoginName: "alice@example.com", DisplayName: "Alice \"A\" Smith",
		ProfilePicURL: "https://example.com/a.png", NodeName: "laptop.tail1.ts.net", NodeID: "nABC", Tailnet: "tail1.ts.net",
	}
}

func TestTokenJSON(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tok := Token{
		Issuer: "https://idp.example", Subject: "user:42", Audience: "api", IssuedAt: now, NotBefore: now,
		Expiry: now.Add(time.Hour), ID: "jti1", Scope: "read write", Identity: person(),
		Extra: []Claim{{Name: "groups", Value: json.RawMessage(`["eng","ops"]`)}, {Name: "x-role", Value: json.RawMessage(`"admin"`)}},
	}
	b := tok.AppendJSON(nil)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("payload is not JSON: %v\n%s", err, b)
	}
	want := map[string]any{
		"iss": "https://idp.example", "sub": "user:42", "aud": "api", "exp": float64(1_700_003_600),
		"iat": float64(1_700_000_000), "nbf": float64(1_700_000_000), "jti": "jti1", "scope": "read write",
		"user_id": "42", "login_name": "alice@example.com", "preferred_username": "alice@example.com",
		"email": "alice@example.com", "name": `Alice "A" Smith`, "picture": "https://example.com/a.png",
		"tailnet": "tail1.ts.net", "node": "laptop.tail1.ts.net", "node_id": "nABC",
		"groups": []any{"eng", "ops"}, "x-role": "admin",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("claims:\n got %v\nwant %v", got, want)
	}
	if b2 := tok.AppendJSON(nil); string(b2) != string(b) {
		t.Error("encoding is not deterministic")
	}
}

func TestTokenJSONTaggedHasNoUserClaims(t *testing.T) {
	id := &identity.Identity{Subject: "node:nT", NodeName: "ci.tail1.ts.net", NodeID: "nT", Tailnet: "tail1.ts.net",
		Tagged: true, Tags: []string{"tag:ci", "tag:prod"},
		// Test control reports the registering user for tagged nodes; the
		// token must not carry it.
		LoginName: "user-1@example.com", UserID: "1"}
	b := (&Token{Issuer: "i", Subject: id.Subject, Audience: "a", Identity: id}).AppendJSON(nil)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"user_id", "login_name", "email", "name", "preferred_username"} {
		if _, ok := got[k]; ok {
			t.Errorf("tagged token has %q: %s", k, b)
		}
	}
	if got["tagged"] != true || !reflect.DeepEqual(got["tags"], []any{"tag:ci", "tag:prod"}) {
		t.Errorf("tagged claims wrong: %s", b)
	}
}

func TestEmailOnlyForEmailLogins(t *testing.T) {
	for login, want := range map[string]bool{
		"alice@example.com": true, "alice@github": false, "alice": false, "@example.com": false, "a@b@c.com": false, "a@.com": false,
	} {
		if got := looksLikeEmail(login); got != want {
			t.Errorf("looksLikeEmail(%q) = %v, want %v", login, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	declared := map[string]bool{"groups": true}
	tests := []struct {
		c       Claim
		allowed map[string]bool
		wantErr string
	}{
		{Claim{"groups", json.RawMessage(`["a"]`)}, declared, ""},
		{Claim{"groups", json.RawMessage(`["a"]`)}, nil, ""},
		{Claim{"sub", json.RawMessage(`"x"`)}, nil, "reserved"},
		{Claim{"email", json.RawMessage(`"x@y.z"`)}, map[string]bool{"email": true}, "reserved"},
		{Claim{"role", json.RawMessage(`"x"`)}, declared, "not declared"},
		{Claim{"groups", json.RawMessage(`[`)}, declared, "not valid JSON"},
		{Claim{"groups", json.RawMessage(`"` + strings.Repeat("a", MaxClaimBytes) + `"`)}, declared, "limit"},
		{Claim{"", json.RawMessage(`1`)}, nil, "empty"},
		{Claim{`a"b`, json.RawMessage(`1`)}, nil, "not allowed"},
		{Claim{"groups", json.RawMessage("[\"\xff\xfe\"]")}, declared, "not valid UTF-8"},
		{Claim{"groups", json.RawMessage("\"\xed\xa0\x80\"")}, declared, "not valid UTF-8"}, // a surrogate, encoded
		{Claim{"groups", json.RawMessage(`"\ud800 h\u00e9llo 🎉"`)}, declared, ""},           // escapes are fine
		{Claim{"gr\xffoups", json.RawMessage(`1`)}, nil, "not allowed"},
	}
	for _, tt := range tests {
		err := tt.c.Validate(tt.allowed)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Validate(%s) = %v, want error containing %q", tt.c.Name, err, tt.wantErr)
		}
	}
}

// FuzzValidatedClaimInToken checks that any claim Validate accepts lands in
// the token payload as valid UTF-8 JSON, under its own name and with its own
// value: strict verifiers (Python's json.loads, for one) reject anything else.
func FuzzValidatedClaimInToken(f *testing.F) {
	f.Add("groups", []byte(`["eng","ops"]`))
	f.Add("groups", []byte("[\"\xff\xfe\"]"))
	f.Add("gr\xffoups", []byte(`1`))
	f.Add("x-role", []byte(`"\u2028<&>\ud800"`))
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		c := Claim{Name: name, Value: json.RawMessage(value)}
		if c.Validate(nil) != nil {
			return
		}
		tok := Token{Issuer: "i", Subject: "user:42", Audience: "a", Identity: person(), Extra: []Claim{c}}
		b := tok.AppendJSON(nil)
		if !utf8.Valid(b) || !json.Valid(b) {
			t.Fatalf("claim %q = %q accepted, but the payload is not valid UTF-8 JSON: %q", name, value, b)
		}
		// Numbers as written: 1e400 is valid JSON but no float64.
		decode := func(b []byte, v any) {
			t.Helper()
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			if err := dec.Decode(v); err != nil {
				t.Fatalf("decoding %q: %v", b, err)
			}
		}
		var got map[string]any
		decode(b, &got)
		var want any
		decode(value, &want)
		if v, ok := got[name]; !ok || !reflect.DeepEqual(v, want) {
			t.Fatalf("claim %q = %q accepted, but the payload has %q = %v (present %v): %q", name, value, name, v, ok, b)
		}
	})
}

func TestMerge(t *testing.T) {
	a := []Claim{{"groups", json.RawMessage(`["eng","ops"]`)}, {"role", json.RawMessage(`"dev"`)}}
	b := []Claim{{"groups", json.RawMessage(`["ops","sre"]`)}, {"role", json.RawMessage(`"admin"`)}, {"dept", json.RawMessage(`"R&D"`)}}
	got := Merge(append([]Claim(nil), a...), b)
	want := map[string]string{"dept": `"R&D"`, "groups": `["eng","ops","sre"]`, "role": `"admin"`}
	if len(got) != len(want) {
		t.Fatalf("Merge = %v", got)
	}
	for i, c := range got {
		if string(c.Value) != want[c.Name] {
			t.Errorf("%s = %s, want %s", c.Name, c.Value, want[c.Name])
		}
		if i > 0 && got[i-1].Name > c.Name {
			t.Errorf("not sorted: %v", got)
		}
	}
	if g := Strings(got, "groups"); !reflect.DeepEqual(g, []string{"eng", "ops", "sre"}) {
		t.Errorf("Strings(groups) = %v", g)
	}
	if g := Strings([]Claim{{"groups", json.RawMessage(`"solo"`)}}, "groups"); !reflect.DeepEqual(g, []string{"solo"}) {
		t.Errorf("Strings(single) = %v", g)
	}
}

func BenchmarkTokenAppendJSON(b *testing.B) {
	now := time.Now()
	tok := Token{Issuer: "https://idp.example", Subject: "user:42", Audience: "api", IssuedAt: now, NotBefore: now,
		Expiry: now.Add(time.Hour), ID: "0123456789abcdefghijkl", Identity: person()}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = tok.AppendJSON(buf[:0])
	}
}

// TestReservedClaimsDocumented: docs/plugins.md names every claim a plugin
// may not set, so plugin authors see the whole list.
func TestReservedClaimsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/plugins.md")
	if err != nil {
		t.Fatal(err)
	}
	_, para, _ := strings.Cut(string(doc), "A plugin can never set a reserved claim")
	para, _, _ = strings.Cut(para, "\n\n")
	for name := range reserved {
		if !strings.Contains(para, "`"+name+"`") {
			t.Errorf("docs/plugins.md does not list the reserved claim %q", name)
		}
	}
	if !IsReserved("sub") || IsReserved("groups") {
		t.Error("IsReserved disagrees with the list")
	}
}

// TestTokenJSONOAuthClaims: client_id, auth_time and sid appear when set.
func TestTokenJSONOAuthClaims(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tok := Token{Issuer: "i", Subject: "user:42", Audience: "app", IssuedAt: now, Expiry: now.Add(time.Hour),
		ClientID: "app", AuthTime: now.Add(-time.Minute), SessionID: "s1"}
	var got map[string]any
	if err := json.Unmarshal(tok.AppendJSON(nil), &got); err != nil {
		t.Fatal(err)
	}
	if got["client_id"] != "app" || got["auth_time"] != float64(1_700_000_000-60) || got["sid"] != "s1" {
		t.Errorf("claims %v", got)
	}
	tok.ClientID, tok.AuthTime, tok.SessionID = "", time.Time{}, ""
	got = nil
	json.Unmarshal(tok.AppendJSON(nil), &got)
	for _, k := range []string{"client_id", "auth_time", "sid"} {
		if _, ok := got[k]; ok {
			t.Errorf("unset %s is in the payload", k)
		}
	}
}
