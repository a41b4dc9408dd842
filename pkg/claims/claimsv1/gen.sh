#!/bin/sh
# Regenerates claims.pb.go and claims_grpc.pb.go from claims.proto, into
# this directory or the one given as $1. Needs protoc (Debian: apt-get
# install protobuf-compiler libprotobuf-dev: the compiler and the well-known
# .proto files it imports). The Go code generators are pinned here and
# installed into a temporary GOBIN, so the output does not depend on what
# happens to be on PATH.
set -eu
cd "$(dirname "$0")"
out=${1:-.}
PROTOC_GEN_GO=v1.36.12
PROTOC_GEN_GO_GRPC=v1.6.2
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO
GOBIN=$bin GOFLAGS= go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC
PATH=$bin:$PATH protoc -I . \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
	claims.proto
