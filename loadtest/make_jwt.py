#!/usr/bin/env python3
"""Signing keys and tokens for the JWT benchmark rows, made with openssl and the standard
library only: writes DIR/jwks.json (an RS256, an ES256 and an EdDSA key) and prints one
`ALG=<token>` line per key. The tokens are valid for a day, issuer https://idp.bench.

    loadtest/make_jwt.py DIR
"""

import base64
import json
import os
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args: str, data: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=data, check=True, capture_output=True).stdout


def der_ecdsa_to_raw(der: bytes) -> bytes:
    """An ECDSA signature as DER (SEQUENCE of INTEGER r, s) to JWS's r || s, 32 bytes each."""
    assert der[0] == 0x30
    at = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    parts = []
    for _ in range(2):
        assert der[at] == 0x02
        length = der[at + 1]
        value = der[at + 2 : at + 2 + length].lstrip(b"\x00")
        parts.append(value.rjust(32, b"\x00"))
        at += 2 + length
    return b"".join(parts)


def main() -> None:
    folder = sys.argv[1]
    rsa = os.path.join(folder, "rsa.pem")
    ec = os.path.join(folder, "ec.pem")
    ed = os.path.join(folder, "ed.pem")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec)
    openssl("genpkey", "-algorithm", "ED25519", "-out", ed)
    modulus = openssl("rsa", "-noout", "-modulus", "-in", rsa).decode().strip().split("=", 1)[1]
    # The DER of a public key ends with its raw point (EC: 04 || x || y) or key (Ed25519).
    ec_point = openssl("pkey", "-in", ec, "-pubout", "-outform", "DER")[-65:]
    ed_key = openssl("pkey", "-in", ed, "-pubout", "-outform", "DER")[-32:]
    keys = [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": b64url(ec_point[1:33]), "y": b64url(ec_point[33:])},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64url(ed_key)},
    ]
    with open(os.path.join(folder, "jwks.json"), "w") as out:
        json.dump({"keys": keys}, out)
    now = int(time.time())
    claims = {"iss": "https://idp.bench", "aud": "bench", "sub": "bench-user", "iat": now, "exp": now + 86400}
    for alg, kid, key in (("RS256", "rsa", rsa), ("ES256", "ec", ec), ("EdDSA", "ed", ed)):
        signing_input = (
            b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
            + "."
            + b64url(json.dumps(claims).encode())
        ).encode()
        if alg == "EdDSA":
            path = os.path.join(folder, "input")
            with open(path, "wb") as out:
                out.write(signing_input)
            signature = openssl("pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", path)
        else:
            signature = openssl("dgst", "-sha256", "-sign", key, data=signing_input)
            if alg == "ES256":
                signature = der_ecdsa_to_raw(signature)
        print(f"{alg}={signing_input.decode()}.{b64url(signature)}")


if __name__ == "__main__":
    main()
