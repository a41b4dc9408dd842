package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/tsidp/tsidp/internal/httpsrv"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/session"
)

// AppClientID is the client ID of the sandbox's demo relying party.
const AppClientID = "sandbox-app"

// DefaultListenApp is where the demo relying party listens.
const DefaultListenApp = "127.0.0.1:8486"

// appClient is the client configuration of the demo relying party: a
// confidential web app with a secret made at start.
func appClient(listen, secret string) clients.Config {
	base := "http://" + listen
	return clients.Config{
		ID: AppClientID, Name: "Sandbox App", SecretSHA256: clients.SecretHash(secret),
		RedirectURIs: []string{base + "/callback"}, PostLogoutRedirectURIs: []string{base + "/"},
		Allow: []string{"*"},
	}
}

// App is the sandbox's demo relying party: a web app that logs people in
// with tsidp (the authorization code flow with PKCE, as any OpenID Connect
// app would, with go-oidc and golang.org/x/oauth2) and shows the ID
// token's claims. It keeps its own sessions in a cookie, as such an app
// does; tsidp's pages set none.
type App struct {
	ln       net.Listener
	srv      *http.Server
	issuer   string
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	endURL   string

	mu       sync.Mutex
	logins   map[string]appLogin   // by state
	sessions map[string]appSession // by cookie
}

type appLogin struct {
	verifier, nonce string
	at              time.Time
}

type appSession struct {
	rawIDToken string
	claims     map[string]any
	userinfo   map[string]any
}

// startApp serves the demo relying party on ln for issuer.
func startApp(ctx context.Context, ln net.Listener, issuer, secret string) (*App, error) {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	provider, err := oidc.NewProvider(pctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("sandbox: demo app: discovery: %w", err)
	}
	var meta struct {
		EndSession string `json:"end_session_endpoint"`
	}
	provider.Claims(&meta)
	base := "http://" + ln.Addr().String()
	a := &App{
		ln: ln, issuer: issuer, endURL: meta.EndSession,
		oauth: oauth2.Config{
			ClientID: AppClientID, ClientSecret: secret, Endpoint: provider.Endpoint(),
			RedirectURL: base + "/callback",
			Scopes:      []string{oidc.ScopeOpenID, "profile", "email", "groups"},
		},
		verifier: provider.Verifier(&oidc.Config{ClientID: AppClientID}),
		logins:   map[string]appLogin{},
		sessions: map[string]appSession{},
	}
	a.oauth.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.home)
	mux.HandleFunc("GET /login", a.login)
	mux.HandleFunc("GET /callback", a.callback)
	mux.HandleFunc("GET /logout", a.logout)
	a.srv = httpsrv.New(mux, httpsrv.Options{})
	go a.srv.Serve(ln)
	return a, nil
}

// URL returns the app's base URL.
func (a *App) URL() string { return "http://" + a.ln.Addr().String() }

// Close stops the app.
func (a *App) Close() error { return a.srv.Close() }

const appCookie = "sandbox_app_session"

func (a *App) home(w http.ResponseWriter, r *http.Request) {
	var s *appSession
	if c, err := r.Cookie(appCookie); err == nil {
		a.mu.Lock()
		if v, ok := a.sessions[c.Value]; ok {
			s = &v
		}
		a.mu.Unlock()
	}
	d := appPage{Issuer: a.issuer}
	if s != nil {
		claims, _ := json.MarshalIndent(s.claims, "", "  ")
		ui, _ := json.MarshalIndent(s.userinfo, "", "  ")
		d.Claims, d.UserInfo, d.Who = string(claims), string(ui), fmt.Sprint(s.claims["preferred_username"])
		if d.Who == "<nil>" {
			d.Who = fmt.Sprint(s.claims["sub"])
		}
	}
	renderApp(w, http.StatusOK, d)
}

func (a *App) login(w http.ResponseWriter, r *http.Request) {
	state, nonce, verifier := session.NewID(), session.NewID(), oauth2.GenerateVerifier()
	a.mu.Lock()
	for k, l := range a.logins { // bound what an idle browser leaves behind
		if time.Since(l.at) > 10*time.Minute {
			delete(a.logins, k)
		}
	}
	a.logins[state] = appLogin{verifier: verifier, nonce: nonce, at: time.Now()}
	a.mu.Unlock()
	http.Redirect(w, r, a.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusFound)
}

func (a *App) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	a.mu.Lock()
	l, ok := a.logins[q.Get("state")]
	delete(a.logins, q.Get("state"))
	a.mu.Unlock()
	switch {
	case !ok:
		renderApp(w, http.StatusBadRequest, appPage{Issuer: a.issuer, Error: "unknown or reused state: start again"})
		return
	case q.Get("error") != "":
		renderApp(w, http.StatusForbidden, appPage{Issuer: a.issuer, Error: "tsidp said " + q.Get("error") + ": " + q.Get("error_description")})
		return
	case q.Get("iss") != a.issuer:
		renderApp(w, http.StatusBadRequest, appPage{Issuer: a.issuer, Error: "the answer came from another issuer (RFC 9207)"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	tok, err := a.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(l.verifier))
	if err != nil {
		renderApp(w, http.StatusBadGateway, appPage{Issuer: a.issuer, Error: "code exchange: " + err.Error()})
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := a.verifier.Verify(ctx, raw)
	if err != nil || idt.Nonce != l.nonce {
		renderApp(w, http.StatusBadGateway, appPage{Issuer: a.issuer, Error: fmt.Sprintf("ID token refused: %v (nonce ok: %v)", err, err == nil && idt.Nonce == l.nonce)})
		return
	}
	if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
		renderApp(w, http.StatusBadGateway, appPage{Issuer: a.issuer, Error: "at_hash: " + err.Error()})
		return
	}
	s := appSession{rawIDToken: raw, claims: map[string]any{}, userinfo: map[string]any{}}
	idt.Claims(&s.claims)
	if p, err := oidc.NewProvider(ctx, a.issuer); err == nil {
		if ui, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil {
			ui.Claims(&s.userinfo)
		}
	}
	id := session.NewSecret()
	a.mu.Lock()
	a.sessions[id] = s
	a.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: appCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, "/", http.StatusFound)
}

func (a *App) logout(w http.ResponseWriter, r *http.Request) {
	target := "/"
	if c, err := r.Cookie(appCookie); err == nil {
		a.mu.Lock()
		s, ok := a.sessions[c.Value]
		delete(a.sessions, c.Value)
		a.mu.Unlock()
		if ok && a.endURL != "" {
			target = a.endURL + "?" + url.Values{"id_token_hint": {s.rawIDToken}, "post_logout_redirect_uri": {a.URL() + "/"}}.Encode()
		}
	}
	http.SetCookie(w, &http.Cookie{Name: appCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, target, http.StatusFound)
}

type appPage struct {
	Issuer, Who, Claims, UserInfo, Error string
}

var appTemplate = template.Must(template.New("app").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sandbox App</title></head>
<body>
<h1>Sandbox App</h1>
<p>A web app that signs people in with tsidp (<code>{{.Issuer}}</code>), as Grafana or your own app would.</p>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
{{if .Claims}}
<p id="signed-in">Signed in as <strong id="who">{{.Who}}</strong>. <a href="/logout" id="logout">Sign out</a></p>
<h2>ID token claims</h2>
<pre id="claims">{{.Claims}}</pre>
<h2>UserInfo</h2>
<pre id="userinfo">{{.UserInfo}}</pre>
{{else}}
<p><a href="/login" id="login">Sign in with tsidp</a></p>
{{end}}
</body></html>`))

func renderApp(w http.ResponseWriter, status int, d appPage) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	appTemplate.Execute(w, d)
}
