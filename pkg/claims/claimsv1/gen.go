package claimsv1

// Regenerate the Go code after editing claims.proto (needs protoc; the
// script installs the pinned protoc-gen-go and protoc-gen-go-grpc):
//
//go:generate ./gen.sh
