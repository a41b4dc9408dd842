package plugin

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
)

// Register registers a built-in plugin's tsidp.claims.v1 service on a gRPC
// server, e.g. sdk.RegisterServer bound to a plugin value.
type Register func(grpc.ServiceRegistrar)

// inProcessLauncher runs a built-in plugin over an in-memory gRPC
// connection, so that it goes through exactly the same client code,
// validation, caching and error policy as an external plugin.
type inProcessLauncher struct {
	register   Register
	configJSON []byte
	// startTimeout bounds Describe and Configure, as for external
	// plugins: a built-in that hangs there must not block Start forever.
	startTimeout time.Duration
}

func (l *inProcessLauncher) launch(ctx context.Context) (*instance, error) {
	lis := bufconn.Listen(256 << 10)
	srv := grpc.NewServer()
	l.register(srv)
	hs := health.NewServer()
	hs.SetServingStatus(claimsv1.HealthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)

	conn, err := grpc.NewClient("passthrough:///builtin",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)),
	)
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("start: %w", err)
	}
	var once sync.Once
	inst := &instance{
		started: time.Now(),
		exited:  func() bool { return false },
		stop: func(bool) {
			once.Do(func() {
				conn.Close()
				srv.Stop()
			})
		},
	}
	hctx, cancel := context.WithTimeout(ctx, l.startTimeout)
	defer cancel()
	if err := handshake(hctx, conn, l.configJSON, inst); err != nil {
		inst.stop(false)
		return nil, err
	}
	return inst, nil
}
