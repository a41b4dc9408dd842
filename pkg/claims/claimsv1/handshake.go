// Package claimsv1 is the tsidp.claims.v1 plugin protocol: the gRPC service
// generated from claims.proto and the go-plugin handshake values that tsidp
// and every plugin, in any language, must agree on.
package claimsv1

// Handshake values. A plugin checks that the environment variable
// MagicCookieKey holds MagicCookieValue (so that running it by hand prints
// a helpful message instead of hanging), and announces ProtocolVersion in
// the second field of its handshake line on stdout:
//
//	1|1|unix|/path/to/socket|grpc|<base64 DER server certificate>
const (
	ProtocolVersion  = 1
	MagicCookieKey   = "TSIDP_PLUGIN"
	MagicCookieValue = "a4f2c9e0-claims-v1"
	// PluginName is the go-plugin plugin-set key the host dispenses.
	PluginName = "claims"
	// HealthService is the gRPC health service name a plugin reports as
	// SERVING (go-plugin's convention).
	HealthService = "plugin"
)
