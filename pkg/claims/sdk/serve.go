package sdk

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/tsidp/tsidp/pkg/claims/claimsv1"
)

// stderr is the process's real standard error, captured before go-plugin
// redirects os.Stderr into its stdio stream: tsidp reads this one.
var stderr io.Writer = os.Stderr

var logger = newLogger(stderr)

// newLogger returns a JSON logger in the shape tsidp parses.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		// tsidp reads hclog-style keys; slog's defaults work too, but these
		// keep one shape for go-plugin's own lines and the plugin's.
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.MessageKey:
				a.Key = "@message"
			case slog.LevelKey:
				a.Key = "@level"
				a.Value = slog.StringValue(levelName(a.Value.Any()))
			case slog.TimeKey:
				a.Key = "@timestamp"
			}
			return a
		},
	}))
}

func levelName(v any) string {
	l, ok := v.(slog.Level)
	if !ok {
		return "info"
	}
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	}
	return "debug"
}

// Logger returns the plugin's logger. It writes JSON lines to standard
// error, which tsidp reads and logs under the plugin's name.
func Logger() *slog.Logger { return logger }

// Serve runs p as a tsidp plugin and never returns. Call it from main. Run
// by hand (not by tsidp), it prints a short explanation and exits 1.
func Serve(p Plugin) {
	dieWithParent()
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         goplugin.PluginSet{claimsv1.PluginName: &grpcPlugin{impl: p}},
		GRPCServer:      goplugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Level:      hclog.Warn,
			Output:     stderr,
			JSONFormat: true,
		}),
	})
	// go-plugin exits the process itself; this is only reached in its
	// test mode.
	os.Exit(0)
}

// Handshake is the go-plugin handshake of the tsidp.claims.v1 protocol.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  claimsv1.ProtocolVersion,
	MagicCookieKey:   claimsv1.MagicCookieKey,
	MagicCookieValue: claimsv1.MagicCookieValue,
}

// grpcPlugin adapts a Plugin to go-plugin's GRPCPlugin.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	impl Plugin
}

func (g *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	RegisterServer(s, g.impl)
	return nil
}

func (g *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	// Only the plugin side uses this type.
	return nil, nil
}
