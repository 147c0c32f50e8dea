//! Signed tokens for the JWT tests: keys made here (RSA by openssl, P-256 and Ed25519 by
//! rcgen), their JWKS, and claims.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    /// A P-256 key (ES256).
    pub fn ec(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
        }
    }

    /// An Ed25519 key (EdDSA).
    pub fn ed(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
        }
    }

    /// A 2048-bit RSA key (RS256), made by openssl in `dir`.
    pub fn rsa(dir: &Path, kid: &str) -> SigningKey {
        let file = dir.join(format!("{kid}.pem"));
        let made = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&file)
            .output()
            .expect("openssl is installed by `make deps`");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let modulus = Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8(modulus.stdout).unwrap();
        let hex_modulus = text
            .trim()
            .strip_prefix("Modulus=")
            .expect("openssl's modulus line");
        let n = hex::decode(hex_modulus).unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&std::fs::read(&file).unwrap()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256",
                "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
        }
    }

    /// A token with `claims`, signed by this key under its kid.
    pub fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.encoding).unwrap()
    }
}

pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims from `https://idp.test` for `orders`, valid for an hour, with `extra` added.
pub fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut claims = json!({"iss": "https://idp.test", "aud": "orders", "sub": sub,
        "iat": now(), "exp": now() + 3600});
    for (key, value) in extra.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}
