#!/bin/sh
# Generates the Python gRPC stubs of the plugin protocol into gen/ (or into
# the directory given as $1). Needs Debian's python3-grpc-tools, run with
# /usr/bin/python3 (the interpreter that sees Debian's packages).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/gen}
mkdir -p "$out"
/usr/bin/python3 -m grpc_tools.protoc \
	-I "$here/../../pkg/claims/claimsv1" -I "$here/proto" -I /usr/include \
	--python_out="$out" --grpc_python_out="$out" \
	claims.proto goplugin.proto health.proto
