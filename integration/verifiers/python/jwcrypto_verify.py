#!/usr/bin/python3
"""Verifies a tsidp token with jwcrypto, finding the key through discovery and
the JWKS.

usage: jwcrypto_verify.py ISSUER AUDIENCE ALG TOKEN

Prints the token's claims as JSON and exits 0 when the token is valid: signed
with ALG by a key in the issuer's JWKS, issued by ISSUER, for AUDIENCE, and
not expired. Exits 1 with a one-line reason when it is not, and 2 when
jwcrypto cannot verify ALG at all.
"""
import json
import sys
import urllib.request

from jwcrypto import jwk, jws, jwt
from jwcrypto.common import JWException


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=10) as res:
        return json.load(res)


def main(issuer, audience, alg, token):
    if alg not in jws.default_allowed_algs:
        return 2, f"jwcrypto does not support {alg}"

    # Discovery says where the keys are; it must name the issuer we trust.
    discovery = fetch_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if discovery["issuer"] != issuer:
        return 1, f"discovery names issuer {discovery['issuer']!r}, not {issuer!r}"
    keys = jwk.JWKSet()
    keys.import_keyset(json.dumps(fetch_json(discovery["jwks_uri"])))

    # With check_claims, jwcrypto checks exp and nbf only when they are
    # listed: list every claim that must be present and valid.
    t = jwt.JWT(
        algs=[alg],  # never the token's own "alg" header
        check_claims={"iss": issuer, "aud": audience, "exp": None, "nbf": None, "sub": None},
    )
    t.leeway = 0  # the default is 60 seconds
    try:
        t.deserialize(token, keys)  # picks the key by the token's "kid"
    except (JWException, ValueError) as e:
        return 1, f"{type(e).__name__}: {e}"
    return 0, t.claims


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    code, out = main(*sys.argv[1:])
    print(out)
    sys.exit(code)
