package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
)

// Description is what a plugin reported about itself.
type Description struct {
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	Claims    []string `json:"claims"`
	Cacheable bool     `json:"cacheable"`
}

// instance is one running incarnation of a plugin: a process started by
// go-plugin or an in-process server. A crashed or hung instance is never
// revived; the supervisor replaces it with a new one.
type instance struct {
	client  claimsv1.ClaimsPluginClient
	health  healthpb.HealthClient
	desc    Description
	allowed map[string]bool
	pid     int // 0 in process
	started time.Time
	// timeouts counts the calls in a row that timed out with no answer
	// in between; at hangLimit the instance is replaced.
	timeouts atomic.Int32

	// exited reports whether the process is gone.
	exited func() bool
	// stop ends the instance; graceful asks it to shut down first.
	stop func(graceful bool)
}

// launcher starts instances of one plugin.
type launcher interface {
	launch(ctx context.Context) (*instance, error)
}

// handshake describes and configures a freshly started instance over conn.
func handshake(ctx context.Context, conn grpc.ClientConnInterface, configJSON []byte, inst *instance) error {
	inst.client = claimsv1.NewClaimsPluginClient(conn)
	inst.health = healthpb.NewHealthClient(conn)
	d, err := inst.client.Describe(ctx, &claimsv1.DescribeRequest{})
	if err != nil {
		return fmt.Errorf("describe: %w", err)
	}
	inst.desc = Description{Name: d.GetName(), Version: d.GetVersion(), Claims: d.GetClaims(), Cacheable: d.GetCacheable()}
	inst.allowed = make(map[string]bool, len(d.GetClaims()))
	for _, c := range d.GetClaims() {
		// Refuse at start rather than at every call: a plugin that
		// believes it may set "sub" is misconfigured or malicious.
		if err := (claims.Claim{Name: c, Value: json.RawMessage("null")}).Validate(nil); err != nil {
			return fmt.Errorf("describe: plugin declares a claim it may not set: %w", err)
		}
		inst.allowed[c] = true
	}
	if _, err := inst.client.Configure(ctx, &claimsv1.ConfigureRequest{ConfigJson: configJSON}); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	return nil
}

// checkHealth asks the instance's gRPC health service, with a deadline
// (go-plugin's Ping has none, so a stopped process would hang it).
func (inst *instance) checkHealth(ctx context.Context, timeout time.Duration) error {
	if inst.exited() {
		return errExited
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := inst.health.Check(ctx, &healthpb.HealthCheckRequest{Service: claimsv1.HealthService})
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check: status %v", s)
	}
	return nil
}
