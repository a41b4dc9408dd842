package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/tsidp/tsidp/pkg/claims/sdk"
)

type config struct {
	URL                   string   `json:"url"`
	StartTLS              bool     `json:"start_tls"`
	InsecurePlaintextBind bool     `json:"insecure_plaintext_bind"`
	CAFile                string   `json:"ca_file"`
	ServerName            string   `json:"server_name"`
	BindDN                string   `json:"bind_dn"`
	BindPasswordFile      string   `json:"bind_password_file"`
	UserBaseDN            string   `json:"user_base_dn"`
	UserFilter            string   `json:"user_filter"`
	LoginDomains          []string `json:"login_domains"`
	GroupMode             string   `json:"group_mode"`
	MemberOfAttribute     string   `json:"member_of_attribute"`
	GroupBaseDN           string   `json:"group_base_dn"`
	GroupFilter           string   `json:"group_filter"`
	GroupNameAttribute    string   `json:"group_name_attribute"`
	Timeout               duration `json:"timeout"`
	CacheTTL              duration `json:"cache_ttl"`

	// groupBase is GroupBaseDN parsed; nil when not set.
	groupBase *ldap.DN
	// domains is LoginDomains, lower-cased; nil when not set.
	domains map[string]bool
}

// duration reads "5s"-style JSON strings.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "5s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

const (
	modeMemberOf = "member_of"
	modeSearch   = "search"
)

func parseConfig(raw json.RawMessage) (*config, error) {
	c := &config{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, err
	}
	if c.UserFilter == "" {
		c.UserFilter = "(mail={login})"
	}
	if c.GroupMode == "" {
		c.GroupMode = modeMemberOf
	}
	if c.MemberOfAttribute == "" {
		c.MemberOfAttribute = "memberOf"
	}
	if c.GroupFilter == "" {
		c.GroupFilter = "(member={dn})"
	}
	if c.GroupNameAttribute == "" {
		c.GroupNameAttribute = "cn"
	}
	if c.Timeout <= 0 {
		c.Timeout = duration(2 * time.Second)
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = duration(time.Minute)
	}
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return nil, errors.New("url is required")
	case err != nil:
		return nil, fmt.Errorf("url: %w", err)
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		return nil, fmt.Errorf("url %q: want ldap:// or ldaps://", c.URL)
	case u.Scheme == "ldaps" && c.StartTLS:
		return nil, errors.New("start_tls applies to ldap:// URLs; ldaps:// is TLS already")
	case c.UserBaseDN == "":
		return nil, errors.New("user_base_dn is required")
	case !strings.Contains(c.UserFilter, "{login}") && !strings.Contains(c.UserFilter, "{localpart}"):
		return nil, errors.New("user_filter must use {login} or {localpart}")
	case c.GroupMode != modeMemberOf && c.GroupMode != modeSearch:
		return nil, fmt.Errorf("group_mode %q: want member_of or search", c.GroupMode)
	case c.GroupMode == modeSearch && c.GroupBaseDN == "":
		return nil, errors.New("group_base_dn is required with group_mode search")
	case c.GroupMode == modeSearch && !strings.Contains(c.GroupFilter, "{dn}"):
		return nil, errors.New("group_filter must use {dn}")
	case c.BindPasswordFile != "" && c.BindDN == "":
		return nil, errors.New("bind_password_file without bind_dn")
	case c.BindPasswordFile != "" && u.Scheme == "ldap" && !c.StartTLS && !c.InsecurePlaintextBind:
		return nil, fmt.Errorf("url %q without start_tls would send the bind password in cleartext; use ldaps://, start_tls: true, or (on a trusted network only) insecure_plaintext_bind: true", c.URL)
	case strings.Contains(c.UserFilter, "{localpart}") && len(c.LoginDomains) == 0:
		// alice@example.com and alice@evil.example have the same local
		// part: without a list of the domains whose people the directory
		// holds, anyone could claim a directory user's groups.
		return nil, errors.New("user_filter uses {localpart}: login_domains is required, listing the login domains whose local parts are directory users")
	}
	// Parse every DN now: go-ldap returns an empty DN, an ancestor of
	// every DN, for one it cannot parse, which would silently turn
	// group_base_dn's scoping off.
	if err := checkDN("user_base_dn", c.UserBaseDN); err != nil {
		return nil, err
	}
	if c.BindDN != "" {
		if err := checkDN("bind_dn", c.BindDN); err != nil {
			return nil, err
		}
	}
	if c.GroupBaseDN != "" {
		if err := checkDN("group_base_dn", c.GroupBaseDN); err != nil {
			return nil, err
		}
		c.groupBase, _ = ldap.ParseDN(c.GroupBaseDN)
	}
	if len(c.LoginDomains) > 0 {
		c.domains = make(map[string]bool, len(c.LoginDomains))
		for _, d := range c.LoginDomains {
			if d == "" || strings.ContainsAny(d, "@*? \t") {
				return nil, fmt.Errorf("login_domains: %q is not a domain (want e.g. \"example.com\")", d)
			}
			c.domains[strings.ToLower(d)] = true
		}
	}
	return c, nil
}

// checkDN reports whether s, the value of the setting named key, is a
// well-formed, non-empty DN.
func checkDN(key, s string) error {
	dn, err := ldap.ParseDN(s)
	if err != nil {
		return fmt.Errorf("%s %q is not a DN: %w", key, s, err)
	}
	if len(dn.RDNs) == 0 {
		return fmt.Errorf("%s %q is an empty DN", key, s)
	}
	return nil
}

// inDomains reports whether login's domain is one of login_domains, or
// whether login_domains is not set.
func (c *config) inDomains(login string) bool {
	if c.domains == nil {
		return true
	}
	_, domain, ok := strings.Cut(login, "@")
	return ok && c.domains[strings.ToLower(domain)]
}

type ldapPlugin struct {
	cfg      *config
	tls      *tls.Config
	password string

	mu   sync.Mutex
	conn *ldap.Conn
}

func (p *ldapPlugin) Describe() sdk.Description {
	return sdk.Description{Name: "ldap-groups", Version: version, Claims: []string{"groups"}, Cacheable: true}
}

func (p *ldapPlugin) Configure(ctx context.Context, raw json.RawMessage) error {
	cfg, err := parseConfig(raw)
	if err != nil {
		return fmt.Errorf("ldap-groups: config: %w", err)
	}
	p.cfg = cfg
	u, _ := url.Parse(cfg.URL)
	p.tls = &tls.Config{ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12}
	if p.tls.ServerName == "" {
		p.tls.ServerName = u.Hostname()
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("ldap-groups: ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ldap-groups: ca_file %s: no PEM certificates", cfg.CAFile)
		}
		p.tls.RootCAs = pool
	}
	if cfg.BindPasswordFile != "" {
		b, err := os.ReadFile(cfg.BindPasswordFile)
		if err != nil {
			return fmt.Errorf("ldap-groups: bind_password_file: %w", err)
		}
		p.password = strings.TrimRight(string(b), "\r\n")
	}
	// Connect now, so that a wrong URL, certificate or password stops
	// tsidp at start rather than at the first token.
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.Timeout))
	defer cancel()
	if _, err := p.connection(ctx); err != nil {
		return fmt.Errorf("ldap-groups: %w", err)
	}
	return nil
}

// connection returns the shared connection, dialing and binding a new one
// if there is none. go-ldap multiplexes concurrent requests on it.
func (p *ldapPlugin) connection(ctx context.Context) (*ldap.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && !p.conn.IsClosing() {
		return p.conn, nil
	}
	timeout := time.Duration(p.cfg.Timeout)
	dialTimeout := timeout
	if dl, ok := ctx.Deadline(); ok {
		dialTimeout = min(timeout, time.Until(dl))
	}
	conn, err := ldap.DialURL(p.cfg.URL,
		ldap.DialWithDialer(&net.Dialer{Timeout: dialTimeout}),
		ldap.DialWithTLSConfig(p.tls))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.cfg.URL, err)
	}
	// The connection is shared by later requests, whose own contexts
	// bound their searches: the remaining time of this one must not
	// become everyone's limit.
	conn.SetTimeout(timeout)
	if p.cfg.StartTLS {
		if err := conn.StartTLS(p.tls); err != nil {
			conn.Close()
			return nil, fmt.Errorf("StartTLS with %s: %w", p.cfg.URL, err)
		}
	}
	if p.cfg.BindDN != "" {
		if err := conn.Bind(p.cfg.BindDN, p.password); err != nil {
			conn.Close()
			return nil, fmt.Errorf("bind as %s: %w", p.cfg.BindDN, err)
		}
	}
	p.conn = conn
	return conn, nil
}

// drop forgets conn if it is still the shared connection.
func (p *ldapPlugin) drop(conn *ldap.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == conn {
		p.conn.Close()
		p.conn = nil
	}
}

func (p *ldapPlugin) Enrich(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	id := req.Identity
	res := &sdk.Response{CacheTTL: time.Duration(p.cfg.CacheTTL)}
	if id.Tagged || id.LoginName == "" {
		return res, nil
	}
	if !p.cfg.inDomains(id.LoginName) {
		// The directory does not know people of other domains: no
		// groups, as for anyone else not in it.
		return res, nil
	}
	var groups []string
	var err error
	// One retry on a fresh connection: the directory may have closed an
	// idle one.
	for attempt := 0; attempt < 2; attempt++ {
		var conn *ldap.Conn
		conn, err = p.connection(ctx)
		if err != nil {
			return nil, err
		}
		groups, err = p.lookup(ctx, conn, id.LoginName)
		if err == nil || !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) && !conn.IsClosing() {
			break
		}
		p.drop(conn)
	}
	if err != nil {
		return nil, err
	}
	if len(groups) > 0 {
		res.Claims = map[string]any{"groups": groups}
	}
	return res, nil
}

// lookup returns the sorted group names of the person logged in as login.
func (p *ldapPlugin) lookup(ctx context.Context, conn *ldap.Conn, login string) ([]string, error) {
	local, _, _ := strings.Cut(login, "@")
	filter := strings.NewReplacer(
		"{login}", ldap.EscapeFilter(login),
		"{localpart}", ldap.EscapeFilter(local),
	).Replace(p.cfg.UserFilter)
	attrs := []string{"1.1"} // no attributes, only the DN
	if p.cfg.GroupMode == modeMemberOf {
		attrs = []string{p.cfg.MemberOfAttribute}
	}
	users, err := search(ctx, conn, p.cfg.UserBaseDN, filter, attrs, 2)
	if err != nil {
		return nil, fmt.Errorf("searching for %s: %w", login, err)
	}
	switch len(users) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("login %s matches several entries under %s", login, p.cfg.UserBaseDN)
	}
	user := users[0]

	var names []string
	if p.cfg.GroupMode == modeMemberOf {
		base := p.cfg.groupBase
		for _, g := range user.GetEqualFoldAttributeValues(p.cfg.MemberOfAttribute) {
			dn, err := ldap.ParseDN(g)
			if err != nil || len(dn.RDNs) == 0 || len(dn.RDNs[0].Attributes) == 0 {
				continue
			}
			if base != nil && !base.AncestorOfFold(dn) {
				continue
			}
			names = append(names, dn.RDNs[0].Attributes[0].Value)
		}
	} else {
		filter := strings.ReplaceAll(p.cfg.GroupFilter, "{dn}", ldap.EscapeFilter(user.DN))
		groups, err := search(ctx, conn, p.cfg.GroupBaseDN, filter, []string{p.cfg.GroupNameAttribute}, 0)
		if err != nil {
			return nil, fmt.Errorf("searching groups of %s: %w", user.DN, err)
		}
		for _, g := range groups {
			names = append(names, g.GetEqualFoldAttributeValues(p.cfg.GroupNameAttribute)...)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// search runs a subtree search bounded by ctx.
func search(ctx context.Context, conn *ldap.Conn, base, filter string, attrs []string, sizeLimit int) ([]*ldap.Entry, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := conn.SearchAsync(ctx, ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		sizeLimit, 0, false, filter, attrs, nil), 16)
	var out []*ldap.Entry
	for r.Next() {
		out = append(out, r.Entry())
	}
	if err := r.Err(); err != nil {
		if sizeLimit > 0 && ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
			return out, nil
		}
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
