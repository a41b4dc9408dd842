package server

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/tsidp/tsidp/pkg/identity"
)

// Check is a named readiness check for /readyz.
//
// /readyz is reachable by anyone who can reach tsidp, so it shows a check's
// Reason, never its error: errors carry socket paths, etcd endpoints and
// plugin output. The error is logged when the check's status changes, and
// the admin API reports the current details.
type Check struct {
	Name  string
	Check func(context.Context) error
	// Reason is what /readyz says while the check fails: short, fixed and
	// free of internal detail. Empty means "check failed".
	Reason string
	// Degrades marks a check whose failure does not stop token issuance
	// (e.g. a replicated key store that is unreachable while the keys in
	// memory still sign): /readyz then answers 200 with status "degraded"
	// instead of 503, so that load balancers keep the instance while
	// monitoring sees the problem.
	Degrades bool
}

// Statuses of a readiness check in /readyz.
const (
	CheckOK       = "ok"
	CheckDegraded = "degraded" // failing, but tokens are still issued
	CheckFailing  = "failing"  // failing, and /readyz answers 503
)

func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// identityReason is /readyz's reason for a failing identity check.
const identityReason = "tailnet identity is unavailable (tailscaled not reachable or not Running)"

// serveReadyz reports whether tokens can be issued now: the identity backend
// answers and every extra check (key store, plugins) passes. It shows each
// check's status and fixed reason; errors go to the log (see Check).
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	type result struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Reason string `json:"reason,omitempty"`
	}
	checks := s.cfg.Ready
	if c, ok := s.identifier.Source().(identity.Checker); ok {
		checks = append([]Check{{Name: "identity", Check: c.Ready, Reason: identityReason}}, checks...)
	}
	status := "ready"
	code := http.StatusOK
	results := make([]result, 0, len(checks))
	for _, c := range checks {
		res := result{Name: c.Name, Status: CheckOK}
		err := c.Check(ctx)
		if err != nil {
			res.Status, res.Reason = CheckFailing, c.Reason
			if c.Degrades {
				res.Status = CheckDegraded
			}
			if res.Reason == "" {
				res.Reason = "check failed"
			}
			switch {
			case !c.Degrades:
				status, code = "not ready", http.StatusServiceUnavailable
			case code == http.StatusOK:
				status = "degraded"
			}
		}
		s.noteReadiness(c.Name, res.Status, err)
		results = append(results, res)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"status": status, "checks": results})
}

// noteReadiness logs a check's error when its status changes, so that the
// log has the detail /readyz leaves out, once per change rather than once
// per probe. Checks start out as ok.
func (s *Server) noteReadiness(name, status string, err error) {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	prev, ok := s.readyState[name]
	if !ok {
		prev = CheckOK
	}
	if status == prev {
		return
	}
	if s.readyState == nil {
		s.readyState = make(map[string]string)
	}
	s.readyState[name] = status
	if err == nil {
		s.cfg.Logf("readyz: check %s is %s again (was %s)", name, status, prev)
		return
	}
	s.cfg.Logf("readyz: check %s is %s: %v", name, status, err)
}
