package claims

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tsidp/tsidp/pkg/identity"
)

// Token is the claim set of one token, in the order it is encoded.
type Token struct {
	Issuer    string
	Subject   string
	Audience  string
	IssuedAt  time.Time
	NotBefore time.Time
	Expiry    time.Time
	ID        string // jti
	Scope     string // space-separated, empty for none

	// ClientID is the OAuth client the token was issued to (RFC 9068
	// "client_id"); AuthTime is when the person authenticated
	// ("auth_time"); SessionID is the login session ("sid"). Each is left
	// out when empty.
	ClientID  string
	AuthTime  time.Time
	SessionID string

	Identity *identity.Identity

	// Extra are enricher claims, already validated, merged and sorted.
	Extra []Claim
}

// AppendJSON appends the token's JSON payload to b. Claims appear in a fixed
// order (registered, identity, then Extra by name), so equal inputs encode to
// equal bytes. It is hand-rolled because it runs once per token on the hot
// path, where encoding/json's reflection and maps cost allocations.
func (t *Token) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	b = appendStringField(b, "iss", t.Issuer, true)
	b = appendStringField(b, "sub", t.Subject, false)
	b = appendStringField(b, "aud", t.Audience, false)
	b = appendIntField(b, "exp", t.Expiry.Unix())
	b = appendIntField(b, "iat", t.IssuedAt.Unix())
	b = appendIntField(b, "nbf", t.NotBefore.Unix())
	b = appendStringField(b, "jti", t.ID, false)
	if t.Scope != "" {
		b = appendStringField(b, "scope", t.Scope, false)
	}
	if t.ClientID != "" {
		b = appendStringField(b, "client_id", t.ClientID, false)
	}
	if !t.AuthTime.IsZero() {
		b = appendIntField(b, "auth_time", t.AuthTime.Unix())
	}
	if t.SessionID != "" {
		b = appendStringField(b, "sid", t.SessionID, false)
	}
	if id := t.Identity; id != nil {
		if !id.Tagged {
			b = appendStringField(b, "user_id", id.UserID, false)
			b = appendStringField(b, "login_name", id.LoginName, false)
			b = appendStringField(b, "preferred_username", id.LoginName, false)
			if looksLikeEmail(id.LoginName) {
				b = appendStringField(b, "email", id.LoginName, false)
			}
			if id.DisplayName != "" {
				b = appendStringField(b, "name", id.DisplayName, false)
			}
			if id.ProfilePicURL != "" {
				b = appendStringField(b, "picture", id.ProfilePicURL, false)
			}
		}
		b = appendStringField(b, "tailnet", id.Tailnet, false)
		b = appendStringField(b, "node", id.NodeName, false)
		b = appendStringField(b, "node_id", id.NodeID, false)
		if id.Tagged {
			b = append(b, `,"tagged":true,"tags":[`...)
			for i, tag := range id.Tags {
				if i > 0 {
					b = append(b, ',')
				}
				b = AppendQuoted(b, tag)
			}
			b = append(b, ']')
		}
	}
	for _, c := range t.Extra {
		b = append(b, ',')
		b = AppendQuoted(b, c.Name)
		b = append(b, ':')
		b = append(b, c.Value...)
	}
	return append(b, '}')
}

// looksLikeEmail reports whether a login name is an email address: one '@'
// with a dotted domain. Logins such as "alice@github" are not.
func looksLikeEmail(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	return ok && local != "" && strings.Contains(domain, ".") && !strings.Contains(domain, "@") &&
		!strings.HasPrefix(domain, ".") && !strings.HasSuffix(domain, ".")
}

func appendStringField(b []byte, name, v string, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return AppendQuoted(b, v)
}

func appendIntField(b []byte, name string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

const hexDigits = "0123456789abcdef"

// AppendQuoted appends s as a JSON string, escaping like encoding/json
// (including <, > and & and the line separators U+2028/U+2029) and replacing
// invalid UTF-8 with U+FFFD.
func AppendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
