#!/usr/bin/python3
"""Verifies a tsidp token with PyJWT, finding the key through discovery and
the JWKS (PyJWKClient).

usage: pyjwt_verify.py ISSUER AUDIENCE ALG TOKEN

Prints the token's claims as JSON and exits 0 when the token is valid: signed
with ALG by a key in the issuer's JWKS, issued by ISSUER, for AUDIENCE, and
not expired. Exits 1 with a one-line reason when it is not, and 2 when PyJWT
cannot verify ALG at all.
"""
import json
import socket
import sys
import urllib.request

import jwt


def main(issuer, audience, alg, token):
    if alg not in jwt.PyJWS().get_algorithms():
        return 2, f"PyJWT {jwt.__version__} does not support {alg}"
    socket.setdefaulttimeout(10)  # PyJWKClient's fetch has no timeout of its own

    # Discovery says where the keys are; it must name the issuer we trust.
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url) as res:
        discovery = json.load(res)
    if discovery["issuer"] != issuer:
        return 1, f"discovery names issuer {discovery['issuer']!r}, not {issuer!r}"

    try:
        key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[alg],  # never the token's own "alg" header
            audience=audience,
            issuer=issuer,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as e:
        return 1, f"{type(e).__name__}: {e}"
    return 0, json.dumps(claims)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    code, out = main(*sys.argv[1:])
    print(out)
    sys.exit(code)
