package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk/sdktest"
)

// baseConfig is the plugin configuration for the test directory: a
// password bind over plain LDAP, which a test on loopback may allow.
func baseConfig(t *testing.T, s *slapd) map[string]any {
	pw := filepath.Join(t.TempDir(), "bind-password")
	os.WriteFile(pw, []byte(servicePW+"\n"), 0o600)
	return map[string]any{
		"url":                     s.ldapURL,
		"insecure_plaintext_bind": true,
		"bind_dn":                 serviceDN,
		"bind_password_file":      pw,
		"user_base_dn":            "ou=people," + baseDN,
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

func groupsOf(t *testing.T, p *plugin.Plugin, login string) string {
	t.Helper()
	res, err := p.Enrich(context.Background(), sdktest.Request(sdktest.Person(login), "aud"))
	if err != nil {
		t.Fatalf("Enrich(%s): %v", login, err)
	}
	return sdktest.Claim(res, "groups")
}

// TestDirectory runs the plugin against a real slapd in each group mode
// and transport.
func TestDirectory(t *testing.T) {
	s := startSlapd(t)
	base := baseConfig(t, s)
	tests := []struct {
		name string
		cfg  map[string]any
	}{
		{"memberOf over ldap", base},
		{"group search over ldap", with(base, "group_mode", "search", "group_base_dn", "ou=groups,"+baseDN)},
		{"memberOf under a group base", with(base, "group_base_dn", "ou=groups,"+baseDN)},
		{"memberOf under a group base in another case", with(base, "group_base_dn", "OU=Groups, DC=Example, DC=COM")},
		{"StartTLS with a CA file", with(base, "start_tls", true, "insecure_plaintext_bind", false, "ca_file", s.caFile, "group_base_dn", "ou=groups,"+baseDN)},
		{"LDAPS with a CA file", with(base, "url", s.ldapsURL, "insecure_plaintext_bind", false, "ca_file", s.caFile, "group_base_dn", "ou=groups,"+baseDN)},
		{"uid from the local part", with(base, "user_filter", "(uid={localpart})", "login_domains", []string{"example.com"}, "group_base_dn", "ou=groups,"+baseDN)},
		{"login domains with the full login", with(base, "login_domains", []string{"Example.COM", "example.org"}, "group_base_dn", "ou=groups,"+baseDN)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := sdktest.Start(t, &ldapPlugin{}, tt.cfg)
			want := map[string]string{
				"alice@example.com":  `["admins","eng"]`,
				"bob@example.com":    `["eng"]`,
				"eve@example.com":    "",
				"nobody@example.com": "",
				"*)(mail=*":          "", // filter injection finds nobody
			}
			if tt.cfg["group_base_dn"] == nil {
				// memberOf without a base includes groups from anywhere.
				want["alice@example.com"] = `["admins","eng","mailing-list"]`
			}
			for login, w := range want {
				if got := groupsOf(t, p, login); got != w {
					t.Errorf("%s: groups = %s, want %s", login, got, w)
				}
			}
			res, err := p.Enrich(context.Background(), sdktest.Request(sdktest.Tagged("ci", "tag:ci"), "aud"))
			if err != nil || len(res.Claims) != 0 {
				t.Errorf("tagged device: %+v, %v", res, err)
			}
		})
	}
}

func TestConfigureErrors(t *testing.T) {
	s := startSlapd(t)
	base := baseConfig(t, s)
	wrongPW := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrongPW, []byte("nope"), 0o600)
	otherCA := writeCerts(t, t.TempDir())
	tests := []struct {
		name string
		cfg  map[string]any
		want string
	}{
		{"wrong password", with(base, "bind_password_file", wrongPW), "Invalid Credentials"},
		{"LDAPS without the CA", with(base, "url", s.ldapsURL), "certificate signed by unknown authority"},
		{"LDAPS with another CA", with(base, "url", s.ldapsURL, "ca_file", otherCA), "certificate signed by unknown authority"},
		{"StartTLS with a wrong name", with(base, "start_tls", true, "ca_file", s.caFile, "server_name", "ldap.example.com"), "certificate is valid for localhost"},
		{"nothing listening", with(base, "url", "ldap://127.0.0.1:1"), "connection refused"},
		{"no url", with(base, "url", ""), "url is required"},
		{"bad scheme", with(base, "url", "http://x"), "want ldap:// or ldaps://"},
		{"no filter placeholder", with(base, "user_filter", "(mail=x)"), "{login} or {localpart}"},
		{"search without base", with(base, "group_mode", "search"), "group_base_dn is required"},
		{"unknown key", with(base, "bind_pasword_file", "x"), `unknown field "bind_pasword_file"`},
		{"ldaps and start_tls", with(base, "url", s.ldapsURL, "start_tls", true), "ldaps:// is TLS already"},
		// go-ldap parses a malformed DN as the empty DN, which is an
		// ancestor of every DN: group_base_dn would scope nothing.
		{"group base not a DN", with(base, "group_base_dn", "groups"), `group_base_dn "groups" is not a DN`},
		{"group base not a DN in search mode", with(base, "group_mode", "search", "group_base_dn", "groups"), `group_base_dn "groups" is not a DN`},
		{"group base empty DN", with(base, "group_base_dn", " "), `group_base_dn " " is an empty DN`},
		{"user base not a DN", with(base, "user_base_dn", "people"), `user_base_dn "people" is not a DN`},
		{"user base empty DN", with(base, "user_base_dn", " "), `user_base_dn " " is an empty DN`},
		{"bind DN not a DN", with(base, "bind_dn", "tsidp"), `bind_dn "tsidp" is not a DN`},
		{"local part without login domains", with(base, "user_filter", "(uid={localpart})"), "login_domains is required"},
		{"login domain with @", with(base, "user_filter", "(uid={localpart})", "login_domains", []string{"@example.com"}), `login_domains: "@example.com" is not a domain`},
		{"empty login domain", with(base, "login_domains", []string{""}), `login_domains: "" is not a domain`},
		{"password in cleartext", with(base, "insecure_plaintext_bind", false), "insecure_plaintext_bind: true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, _ := json.Marshal(tt.cfg)
			err := (&ldapPlugin{}).Configure(context.Background(), raw)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Configure = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

// TestDirectoryFailures shows errors reach tsidp (which applies its
// on_error policy): an ambiguous login, a directory that went away; and
// that the plugin reconnects when the directory is back.
func TestDirectoryFailures(t *testing.T) {
	s := startSlapd(t)
	p := sdktest.Start(t, &ldapPlugin{}, baseConfig(t, s))
	ctx := context.Background()
	if _, err := p.Enrich(ctx, sdktest.Request(sdktest.Person("twin@example.com"), "aud")); err == nil ||
		!strings.Contains(err.Error(), "matches several entries") || !strings.Contains(err.Error(), plugin.ErrUnavailable.Error()) {
		t.Errorf("ambiguous login: %v", err)
	}
	s.kill()
	if _, err := p.Enrich(ctx, sdktest.Request(sdktest.Person("alice@example.com"), "aud")); err == nil {
		t.Errorf("directory down: no error")
	}
	// Restart on the same ports and data.
	if err := s.start(t, filepath.Join(s.dir, "slapd.conf")); err != nil {
		t.Fatal(err)
	}
	if got := groupsOf(t, p, "alice@example.com"); got != `["admins","eng","mailing-list"]` {
		t.Errorf("after reconnecting: groups = %s", got)
	}
}

// TestBinary runs the built plugin the way tsidp does.
func TestBinary(t *testing.T) {
	s := startSlapd(t)
	path, sum := sdktest.Build(t, ".")
	p := sdktest.StartBinary(t, plugin.Config{Name: "ldap", Path: path, SHA256: sum,
		Config: with(baseConfig(t, s), "start_tls", true, "ca_file", s.caFile, "group_mode", "search", "group_base_dn", "ou=groups,"+baseDN)})
	if d := p.Description(); d.Name != "ldap-groups" || !d.Cacheable {
		t.Errorf("Description = %+v", d)
	}
	if got := groupsOf(t, p, "alice@example.com"); got != `["admins","eng"]` {
		t.Errorf("groups = %s", got)
	}
}

// TestBindMatters shows that the directory hides entries from anonymous
// clients, so the groups above came through the service account's bind.
func TestBindMatters(t *testing.T) {
	s := startSlapd(t)
	cfg := baseConfig(t, s)
	delete(cfg, "bind_dn")
	delete(cfg, "bind_password_file")
	delete(cfg, "insecure_plaintext_bind") // no password to protect
	p := sdktest.Start(t, &ldapPlugin{}, cfg)
	res, err := p.Enrich(context.Background(), sdktest.Request(sdktest.Person("alice@example.com"), "aud"))
	if err == nil || !strings.Contains(err.Error(), "No Such Object") {
		t.Errorf("anonymous lookup = %+v, %v; the ACL should hide the people", res, err)
	}
}

// TestLoginDomains shows that a login's local part only finds a directory
// user for the configured login domains: alice@evil.example (or
// alice@github) is not uid=alice.
func TestLoginDomains(t *testing.T) {
	s := startSlapd(t)
	base := with(baseConfig(t, s), "group_base_dn", "ou=groups,"+baseDN)
	tests := []struct {
		name string
		cfg  map[string]any
		want map[string]string
	}{
		{"local part", with(base, "user_filter", "(uid={localpart})", "login_domains", []string{"example.com"}), map[string]string{
			"alice@example.com":  `["admins","eng"]`,
			"Alice@EXAMPLE.com":  `["admins","eng"]`,
			"alice@evil.example": "",
			"alice@github":       "",
			"alice@example.com.": "",
			"alice":              "",
			"bob@example.com":    `["eng"]`,
		}},
		{"full login", with(base, "login_domains", []string{"example.org"}), map[string]string{
			"alice@example.com": "", // in the directory, but not a listed domain
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := sdktest.Start(t, &ldapPlugin{}, tt.cfg)
			for login, w := range tt.want {
				if got := groupsOf(t, p, login); got != w {
					t.Errorf("%s: groups = %s, want %s", login, got, w)
				}
			}
		})
	}
}

// TestRequestTimeoutNotShortened shows that a connection dialed late in one
// request does not impose that request's remaining time on later requests
// sharing the connection.
func TestRequestTimeoutNotShortened(t *testing.T) {
	s := startSlapd(t)
	p := &ldapPlugin{}
	raw, _ := json.Marshal(with(baseConfig(t, s), "timeout", "5s"))
	if err := p.Configure(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.drop(p.conn) })
	// Reconnect in a request with little time left.
	p.drop(p.conn)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	conn, err := p.connection(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	// A later request with time to spare, against a directory that is
	// slow (stopped) for longer than the first request had left.
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Signal(syscall.SIGCONT) })
	time.AfterFunc(600*time.Millisecond, func() { s.cmd.Process.Signal(syscall.SIGCONT) })
	ctx, cancel = context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	groups, err := p.lookup(ctx, conn, "alice@example.com")
	if err != nil || strings.Join(groups, ",") != "admins,eng,mailing-list" {
		t.Errorf("lookup on a slow directory = %v, %v; want the groups", groups, err)
	}
}
