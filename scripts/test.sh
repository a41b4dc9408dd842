#!/usr/bin/env bash
# Runs every tsidp test: unit, integration (real tailnets, real tailscaled,
# slapd, etcd, plugins) and the cross-language verifiers.
#
# It installs what it needs first: Debian packages with apt-get when run as
# root, npm packages for the Node verifier, Go tools. A part that is still
# missing afterwards is an error: tests never skip for a missing part.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed (need Go 1.26)"

# --- Debian packages ------------------------------------------------------
debs=(
  python3-jwt python3-jwcrypto python3-authlib   # Python verifiers (run with /usr/bin/python3)
  libcrypt-jwt-perl                              # Perl verifier
  slapd ldap-utils                               # real LDAP for the ldap-groups plugin
  etcd-server etcd-client                        # real etcd for replicas
  protobuf-compiler libprotobuf-dev              # plugin protocol code generation check (libprotobuf-dev: the well-known .proto files)
  python3-grpcio python3-grpc-tools python3-protobuf python3-cryptography  # Python plugin
  nodejs npm                                     # Node verifier
  default-jdk-headless                           # Java verifier (javac)
  faketime                                       # verifiers run with a clock behind tsidp's
  chromium                                       # a real browser for the OpenID Provider's logins and pages
)
missing=()
for p in "${debs[@]}"; do
  [[ $p == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node and Java may come from elsewhere than Debian; accept working binaries.
filtered=()
for p in "${missing[@]}"; do
  case $p in
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
    default-jdk-headless) command -v javac >/dev/null && continue ;;
  esac
  filtered+=("$p")
done
missing=("${filtered[@]}")
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "missing Debian packages: ${missing[*]} (run as root to install them, or install them yourself)"
  fi
fi

# --- npm packages for the Node verifier ------------------------------------
# --engine-strict: jose 6 needs Node 20.19 or later (Debian 12's nodejs is 18);
# fail here, naming the versions, rather than in the verifier test.
if [[ -f integration/verifiers/node/package.json ]]; then
  log "installing npm packages for the Node verifier"
  (cd integration/verifiers/node && npm ci --engine-strict --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- Go -------------------------------------------------------------------
export CI="${CI:-}"
log "go vet"
go vet ./...

# Packages whose tests start real tailnets, daemons and plugin processes run
# one at a time (-p 1): the machine has few cores and the tests measure
# behaviour under timeouts.
log "unit tests (with the race detector)"
go test -race -count=1 -timeout 10m $(go list ./pkg/... ./cmd/... ./plugins/... ./internal/... | grep -v -e /pkg/tailnet -e /pkg/sandbox)

log "tailnet, sandbox and integration tests"
go test -count=1 -p 1 -timeout 40m ./pkg/tailnet/... ./pkg/sandbox/... ./integration/...

log "all tests passed"
