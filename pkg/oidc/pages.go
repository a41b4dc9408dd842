package oidc

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
)

// style is the pages' only styling, inline and allowed by its hash in the
// Content-Security-Policy: the pages load nothing from anywhere.
const style = `body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;color:#1b1b1b}
h1{font-size:1.4em}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{color:#555}dd{margin:0}
.why{background:#fdf2f2;border-left:4px solid #c0392b;padding:.5em 1em}button{font-size:1em;padding:.4em 1.2em;margin-right:.5em}
.muted{color:#555;font-size:.9em}`

var styleHash = func() string {
	sum := sha256.Sum256([]byte(style))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}()

const layout = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer"><title>{{.Title}} · tsidp</title><style>{{.Style}}</style></head>
<body><main>
<h1>{{.Title}}</h1>
{{- if .Detail}}<p class="why" id="detail">{{.Detail}}</p>{{end}}
{{- if .Who}}
<p>tsidp sees you, by your tailnet connection, as:</p>
<dl id="who">
{{- if .Who.Tagged}}<dt>device</dt><dd id="device">{{.Who.NodeName}} (a tagged device: {{join .Who.Tags ", "}})</dd>
{{- else}}<dt>login</dt><dd id="login">{{.Who.LoginName}}</dd>{{if .Who.DisplayName}}<dt>name</dt><dd>{{.Who.DisplayName}}</dd>{{end}}
<dt>device</dt><dd id="device">{{.Who.NodeName}}</dd>{{end}}
</dl>{{end}}
{{- if .Confirm}}
<p>Sign in to <strong id="client">{{.Confirm.Client}}</strong> as <strong>{{.Confirm.As}}</strong>{{if .Confirm.Scopes}}, sharing {{.Confirm.Scopes}}{{end}}?</p>
<form method="post" action="/authorize/confirm">
<input type="hidden" name="request" value="{{.Confirm.Token}}">
<button type="submit" name="action" value="allow" id="allow">Sign in</button>
<button type="submit" name="action" value="deny" id="deny">Cancel</button>
</form>
<p class="muted">Someone else on this device? Cancel: the application would see you as the person above.</p>
{{- end}}
{{- if .Note}}<p class="muted">{{.Note}}</p>{{end}}
</main></body></html>`

type pageData struct {
	Title, Detail, Note string
	Style               template.CSS
	Who                 *identity.Identity
	Confirm             *confirmData
}

type confirmData struct {
	Client, As, Scopes, Token string
}

type pages struct{ t *template.Template }

func newPages() (*pages, error) {
	t, err := template.New("page").Funcs(template.FuncMap{"join": strings.Join}).Parse(layout)
	if err != nil {
		return nil, err
	}
	return &pages{t: t}, nil
}

// render writes a page with strict headers: no script at all, no frames,
// forms only to tsidp (and formTarget, an origin a form's answer may
// redirect to), nothing cached.
func (pg *pages) render(w http.ResponseWriter, status int, d pageData, formTarget string) {
	d.Style = template.CSS(style)
	var buf bytes.Buffer
	if err := pg.t.Execute(&buf, d); err != nil {
		http.Error(w, "tsidp could not render this page", http.StatusInternalServerError)
		return
	}
	formAction := "'self'"
	if formTarget != "" {
		formAction += " " + formTarget
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src "+styleHash+"; form-action "+formAction+"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// problem explains an error without leaking: what went wrong and what to
// do, never internal detail.
func (pg *pages) problem(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
	pg.render(w, status, pageData{Title: title, Detail: detail}, "")
}

// notIdentified is the page for a browser tsidp cannot identify.
func (pg *pages) notIdentified(w http.ResponseWriter, r *http.Request, ref *issue.Refusal) {
	title, note := "tsidp cannot tell who you are", ""
	switch ref.Status {
	case http.StatusUnauthorized:
		note = "tsidp signs people in by their tailnet connection. Open the application from a device on the tailnet (with Tailscale running)."
	case http.StatusServiceUnavailable:
		title = "tsidp cannot sign you in right now"
		note = "Try again in a moment."
	}
	pg.render(w, ref.Status, pageData{Title: title, Detail: ref.Description, Note: note}, "")
}

// refused is the page for a person or device the login decision refused:
// who tsidp sees and why, never a redirect carrying a token.
func (pg *pages) refused(w http.ResponseWriter, r *http.Request, ref *issue.Refusal, id *identity.Identity, c *clients.Client) {
	title := "You may not sign in to " + c.Name
	if ref.Status == http.StatusServiceUnavailable {
		title = "tsidp cannot sign you in to " + c.Name + " right now"
	}
	pg.render(w, ref.Status, pageData{Title: title, Detail: ref.Description, Who: id,
		Note: "If this is wrong, ask the tailnet's administrator: the rule that decides is in tsidp's configuration or the tailnet policy."}, "")
}

// confirm asks the person to confirm a login.
func (pg *pages) confirm(w http.ResponseWriter, r *http.Request, req *authRequest, id *identity.Identity, token string) {
	as := id.LoginName
	if id.Tagged {
		as = "the tagged device " + id.NodeName
	}
	var shared []string
	for _, s := range req.scopes {
		switch s {
		case clients.ScopeProfile:
			shared = append(shared, "your name and device")
		case clients.ScopeEmail:
			shared = append(shared, "your email address")
		case clients.ScopeGroups:
			shared = append(shared, "your groups")
		case clients.ScopeOfflineAccess:
			shared = append(shared, "staying signed in")
		}
	}
	pg.render(w, http.StatusOK, pageData{Title: "Sign in to " + req.client.Name + "?", Who: id,
		Confirm: &confirmData{Client: req.client.Name, As: as, Scopes: strings.Join(shared, ", "), Token: token}},
		originOf(req.redirect))
}

// signedOut tells the person they are signed out.
func (pg *pages) signedOut(w http.ResponseWriter, r *http.Request, c *clients.Client, ended bool) {
	d := pageData{Title: "You are signed out"}
	switch {
	case ended && c != nil:
		d.Detail = "Your session with " + c.Name + " has ended."
	case !ended:
		d.Title = "Nothing to sign out of"
		d.Note = "tsidp ends a session when the application sends the session's ID token (id_token_hint)."
	}
	pg.render(w, http.StatusOK, d, "")
}

// originOf returns the scheme://host of an http(s) URL, for a CSP source.
func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}
