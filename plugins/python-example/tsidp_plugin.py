"""Serve a tsidp claims plugin (protocol tsidp.claims.v1) from Python.

This module does what the Go SDK does: the go-plugin handshake, AutoMTLS,
the gRPC health service and the controller through which tsidp stops the
plugin. A plugin implements describe(), configure(config) and
enrich(request, context) and calls serve(plugin). It needs Debian's
python3-grpcio, python3-protobuf and python3-cryptography, and the stubs in
gen/ (regenerate them with gen.sh).
"""

import base64
import ctypes
import datetime
import json
import os
import secrets
import sys
import tempfile
import threading
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

import claims_pb2  # noqa: E402,F401  (re-exported for plugins)
import claims_pb2_grpc  # noqa: E402
import goplugin_pb2  # noqa: E402
import goplugin_pb2_grpc  # noqa: E402
import health_pb2  # noqa: E402
import health_pb2_grpc  # noqa: E402

# Handshake values of tsidp.claims.v1 (pkg/claims/claimsv1/handshake.go).
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1
MAGIC_COOKIE_KEY = "TSIDP_PLUGIN"
MAGIC_COOKIE_VALUE = "a4f2c9e0-claims-v1"
HEALTH_SERVICE = "plugin"


def log(level, message, **fields):
    """Writes one JSON log line to stderr; tsidp logs it under the plugin's name."""
    fields.update({"@level": level, "@message": message})
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def _server_certificate():
    """Returns (cert PEM, key PEM, cert DER) of a fresh self-signed certificate.

    tsidp pins it for this process's lifetime: it arrives in the handshake
    line, and tsidp connects with TLS server name "localhost".
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=30))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=True,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.public_bytes(serialization.Encoding.DER)


class _Health(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        if request.service in ("", HEALTH_SERVICE):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")


class _Controller(goplugin_pb2_grpc.GRPCControllerServicer):
    def __init__(self, stop):
        self._stop = stop

    def Shutdown(self, request, context):
        # Answer first, then stop: tsidp waits for the process to exit.
        threading.Timer(0.05, self._stop).start()
        return goplugin_pb2.Empty()


class _Claims(claims_pb2_grpc.ClaimsPluginServicer):
    def __init__(self, plugin):
        self._plugin = plugin

    def Describe(self, request, context):
        return self._plugin.describe()

    def Configure(self, request, context):
        try:
            self._plugin.configure(json.loads(request.config_json or b"{}"))
        except Exception as e:  # the message reaches tsidp's log
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return claims_pb2.ConfigureResponse()

    def Enrich(self, request, context):
        return self._plugin.enrich(request, context)


def _die_with_parent():
    """Asks Linux to kill this process when its parent (tsidp) dies."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG, SIGKILL = 1, 9
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)


def serve(plugin):
    """Runs plugin until tsidp stops it. Never returns."""
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write("This is a tsidp plugin: tsidp starts it (see docs/plugins.md).\n")
        sys.exit(1)
    _die_with_parent()
    versions = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(APP_PROTOCOL_VERSION)).split(",")
    if str(APP_PROTOCOL_VERSION) not in versions:
        sys.stderr.write("tsidp speaks plugin protocol versions %s, this plugin %d\n" % (versions, APP_PROTOCOL_VERSION))
        sys.exit(1)

    # tsidp owns (and cleans) the socket directory.
    sock_dir = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or tempfile.gettempdir()
    sock = os.path.join(sock_dir, "py%s.sock" % secrets.token_hex(4))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    claims_pb2_grpc.add_ClaimsPluginServicer_to_server(_Claims(plugin), server)
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    goplugin_pb2_grpc.add_GRPCControllerServicer_to_server(_Controller(lambda: server.stop(grace=1)), server)

    handshake = "%d|%d|unix|%s|grpc" % (CORE_PROTOCOL_VERSION, APP_PROTOCOL_VERSION, sock)
    client_cert = os.environ.get("PLUGIN_CLIENT_CERT")
    if client_cert:
        # AutoMTLS: accept only tsidp's one-time client certificate, and
        # send tsidp ours (base64 DER without padding) in the handshake.
        cert_pem, key_pem, cert_der = _server_certificate()
        creds = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=client_cert.encode(), require_client_auth=True
        )
        if not server.add_secure_port("unix:" + sock, creds):
            sys.exit("cannot listen on " + sock)
        handshake += "|" + base64.b64encode(cert_der).decode().rstrip("=")
    elif not server.add_insecure_port("unix:" + sock):
        sys.exit("cannot listen on " + sock)

    server.start()
    sys.stdout.write(handshake + "\n")
    sys.stdout.flush()
    server.wait_for_termination()
    try:
        os.unlink(sock)
    except OSError:
        pass
    sys.exit(0)
