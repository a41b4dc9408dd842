#!/usr/bin/python3
"""Verifies a tsidp token with Authlib (authlib.jose), finding the key through
discovery and the JWKS.

usage: authlib_verify.py ISSUER AUDIENCE ALG TOKEN

Prints the token's claims as JSON and exits 0 when the token is valid: signed
with ALG by a key in the issuer's JWKS, issued by ISSUER, for AUDIENCE, and
not expired. Exits 1 with a one-line reason when it is not, and 2 when
Authlib cannot verify ALG at all.
"""
import json
import sys
import urllib.request

from authlib.jose import JsonWebKey, JsonWebSignature, JsonWebToken
from authlib.jose.errors import JoseError


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=10) as res:
        return json.load(res)


def main(issuer, audience, alg, token):
    if alg not in JsonWebSignature.ALGORITHMS_REGISTRY:
        return 2, f"Authlib does not support {alg}"

    # Discovery says where the keys are; it must name the issuer we trust.
    discovery = fetch_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if discovery["issuer"] != issuer:
        return 1, f"discovery names issuer {discovery['issuer']!r}, not {issuer!r}"
    keys = JsonWebKey.import_key_set(fetch_json(discovery["jwks_uri"]))

    try:
        claims = JsonWebToken([alg]).decode(  # never the token's own "alg" header
            token,
            keys,  # picks the key by the token's "kid"
            claims_options={
                "iss": {"essential": True, "value": issuer},
                "aud": {"essential": True, "value": audience},
                "sub": {"essential": True},
                "exp": {"essential": True},
            },
        )
        claims.validate()  # decode checks only the signature: exp, aud and iss are checked here
    except (JoseError, ValueError) as e:
        return 1, f"{type(e).__name__}: {e}"
    return 0, json.dumps(claims)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    code, out = main(*sys.argv[1:])
    print(out)
    sys.exit(code)
