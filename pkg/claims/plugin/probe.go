package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/tsidp/tsidp/pkg/claims"
)

// ProbeResult is what Probe learned about a plugin.
type ProbeResult struct {
	Description Description
	// SHA256 of the file that ran.
	SHA256 string
	PID    int
	// Result is the plugin's answer to the request, after tsidp's checks
	// (refused claims are missing from it and logged).
	Result *claims.Result
	// Elapsed is how long the Enrich call took.
	Elapsed time.Duration
}

// Probe starts the plugin cfg describes, asks it about req once, and stops
// it. If cfg.SHA256 is empty it is computed from the file, so that a plugin
// author can check a fresh build; tsidp's configuration always requires it.
// Errors from the plugin are returned, whatever cfg.OnError says.
func Probe(ctx context.Context, cfg Config, req *claims.Request, opts Options) (*ProbeResult, error) {
	if cfg.SHA256 == "" && cfg.Path != "" {
		sum, err := FileSHA256(cfg.Path)
		if err != nil {
			return nil, fmt.Errorf("plugin: %w", err)
		}
		cfg.SHA256 = sum
	}
	cfg.OnError = OnErrorDeny
	cfg.CacheTTL = -1
	m, err := New([]Config{cfg}, opts)
	if err != nil {
		return nil, err
	}
	if err := m.Start(ctx); err != nil {
		return nil, err
	}
	defer m.Close()
	p := m.plugins[0]
	h := p.Health()
	out := &ProbeResult{Description: p.Description(), SHA256: p.cfg.SHA256, PID: h.PID}
	start := time.Now()
	out.Result, err = p.Enrich(ctx, req)
	out.Elapsed = time.Since(start)
	if err != nil {
		return nil, err
	}
	return out, nil
}
