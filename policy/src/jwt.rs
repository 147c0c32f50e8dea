//! A route's `jwt`: bearer tokens checked against an issuer's public keys (a JWKS from a file
//! or fetched from a URL). The schema type (as written), the compiled one, and the reading of
//! a JWKS document, shared by the policy check (`jwks_file`) and the gateway's fetcher
//! (`jwks_url`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// `jwt = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The `iss` a token must carry; any when absent.
    pub issuer: Option<String>,
    /// Audiences accepted: a token's `aud` must name one of them; not checked when absent.
    pub audiences: Option<Vec<String>>,
    /// A JWKS document on disk (read when the policy is loaded).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched over HTTP(S) in the background.
    pub jwks_url: Option<String>,
    /// CA certificates (PEM) that sign the `jwks_url` server's certificate; the system's roots
    /// when absent.
    pub jwks_ca: Option<PathBuf>,
    /// The shortest time between two fetches of `jwks_url` (default 1m).
    pub min_refresh: Option<crate::duration::Duration>,
    /// The longest time between two fetches of `jwks_url`, and the time used when the answer
    /// has no `Cache-Control: max-age` (default 1h).
    pub max_refresh: Option<crate::duration::Duration>,
    /// Whether a request without a token is refused (default true). A bad token is refused
    /// either way.
    pub required: Option<bool>,
    /// Claims sent upstream as headers: `{ sub = "x-user-id" }`.
    pub forward_claims: Option<BTreeMap<String, String>>,
    /// Whether the `Authorization` header goes upstream (default true).
    pub forward_token: Option<bool>,
    /// Clock skew allowed on `exp` and `nbf` (default 60s).
    pub leeway: Option<crate::duration::Duration>,
    /// Signature algorithms accepted (default every asymmetric one: RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA).
    pub algorithms: Option<Vec<String>>,
}

/// The algorithms accepted when `algorithms` is not given: every asymmetric one. A JWKS holds
/// public keys, so the HMAC ones (a shared secret) are never accepted.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A route's JWT rules, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// The `iss` a token must carry.
    pub issuer: Option<String>,
    /// Audiences accepted; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Where the keys come from.
    pub keys: JwksSource,
    /// Whether a request without a token is refused.
    pub required: bool,
    /// `(claim, header)` pairs: the claim's value is sent upstream in the header (lower-case).
    pub forward_claims: Vec<(String, String)>,
    /// Whether the `Authorization` header goes upstream.
    pub forward_token: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Signature algorithms accepted.
    pub algorithms: Vec<Algorithm>,
}

impl Jwt {
    /// One line for `/routes` (without the state of fetched keys, which the gateway adds).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(issuer) = &self.issuer {
            parts.push(format!("issuer {issuer}"));
        }
        if !self.audiences.is_empty() {
            parts.push(format!("audiences {}", self.audiences.join(" ")));
        }
        parts.push(match &self.keys {
            JwksSource::File { path, keys } => {
                format!("jwks_file {} ({} keys)", path.display(), keys.keys.len())
            }
            JwksSource::Url(url) => format!("jwks_url {}", url.url),
        });
        parts.push(
            if self.required {
                "required"
            } else {
                "optional"
            }
            .to_owned(),
        );
        for (claim, header) in &self.forward_claims {
            parts.push(format!("claim {claim} -> {header}"));
        }
        if !self.forward_token {
            parts.push("token not forwarded".to_owned());
        }
        parts.join("; ")
    }
}

/// Where a route's verification keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    /// A file, read when the policy was loaded: its keys.
    File {
        /// The file.
        path: PathBuf,
        /// Its usable keys.
        keys: JwkSet,
    },
    /// A URL fetched in the background.
    Url(JwksUrl),
}

/// A JWKS URL and how it is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksUrl {
    /// The URL as written.
    pub url: String,
    /// Whether it is `https`.
    pub https: bool,
    /// Its host (a name or an address, without brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its path and query.
    pub path_and_query: String,
    /// CA file trusted for it.
    pub ca: Option<PathBuf>,
    /// Shortest time between fetches.
    pub min_refresh: Duration,
    /// Longest time between fetches.
    pub max_refresh: Duration,
}

/// `min_refresh` when not given.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
/// `max_refresh` when not given.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// `leeway` when not given.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The shortest `min_refresh` accepted, so that a busy identity provider is not hammered.
pub const SHORTEST_REFRESH: Duration = Duration::from_secs(1);

/// What reading a JWKS document found.
#[derive(Debug)]
pub struct ReadJwks {
    /// The keys that can verify one of the accepted algorithms.
    pub keys: JwkSet,
    /// Each key left out, and why (`keys[2]: …`).
    pub left_out: Vec<String>,
}

/// Reads a JWKS document (`{"keys": [...]}`). Encryption keys (`"use": "enc"`) are left out
/// quietly; keys that can't verify any of `algorithms` (a symmetric key, an unknown curve,
/// malformed numbers) are left out and named in `left_out`. An error when the document is not
/// a JWKS or no key is usable.
pub fn read_jwks(document: &[u8], algorithms: &[Algorithm]) -> Result<ReadJwks, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut read = ReadJwks {
        keys: JwkSet { keys: Vec::new() },
        left_out: Vec::new(),
    };
    for (i, value) in document.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                read.left_out.push(format!("keys[{i}]: {e}"));
                continue;
            }
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        match key_algorithms(&jwk, algorithms) {
            Ok(_) => read.keys.keys.push(jwk),
            Err(why) => read.left_out.push(format!("keys[{i}]: {why}")),
        }
    }
    if read.keys.keys.is_empty() {
        let why = if read.left_out.is_empty() {
            "it has no signing key".to_owned()
        } else {
            format!("no key is usable ({})", read.left_out.join("; "))
        };
        return Err(why);
    }
    Ok(read)
}

/// The accepted algorithms `jwk` can verify (its `alg` alone when it names one), or why none.
pub fn key_algorithms(jwk: &Jwk, accepted: &[Algorithm]) -> Result<Vec<Algorithm>, String> {
    let by_type: &[Algorithm] = match &jwk.algorithm {
        // The list starts with the six RSA ones.
        AlgorithmParameters::RSA(_) => &ASYMMETRIC_ALGORITHMS[..6],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err(format!("curve {:?} is not supported", ec.curve)),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err(format!("curve {:?} is not supported", okp.curve)),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key is not accepted: a JWKS carries public keys".into())
        }
    };
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            signature_algorithm(alg)
                .ok_or_else(|| format!("its alg {alg} is not a signature algorithm"))?,
        ),
    };
    let usable: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|alg| accepted.contains(alg) && named.is_none_or(|named| named == *alg))
        .collect();
    if usable.is_empty() {
        return Err(match named {
            Some(alg) if !by_type.contains(&alg) => {
                format!("its alg {alg:?} does not fit its key type")
            }
            _ => "it verifies none of the accepted algorithms".to_owned(),
        });
    }
    DecodingKey::from_jwk(jwk).map_err(|e| format!("its key material is malformed: {e}"))?;
    Ok(usable)
}

/// The signature algorithm a JWK's `alg` names, if it names one.
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => return None,
    })
}

/// Parses an algorithm name of `algorithms`; only the asymmetric ones are accepted.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    ASYMMETRIC_ALGORITHMS
        .iter()
        .copied()
        .find(|alg| format!("{alg:?}") == name)
        .ok_or_else(|| {
            format!(
                "unknown or unaccepted algorithm {name:?}; expected one of RS256, RS384, RS512, \
                 PS256, PS384, PS512, ES256, ES384, EdDSA"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_KEY: &str = r#"{"kty":"RSA","kid":"r1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn reads_rsa_keys_and_refuses_symmetric_ones() {
        let document = format!(r#"{{"keys":[{RSA_KEY}]}}"#);
        let read = read_jwks(document.as_bytes(), &ASYMMETRIC_ALGORITHMS).unwrap();
        assert_eq!(read.keys.keys.len(), 1);
        let secret = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        let error = read_jwks(secret.as_bytes(), &ASYMMETRIC_ALGORITHMS).unwrap_err();
        assert!(error.contains("symmetric"), "{error}");
        let only_es = read_jwks(document.as_bytes(), &[Algorithm::ES256]).unwrap_err();
        assert!(only_es.contains("none of the accepted"), "{only_es}");
        assert!(read_jwks(b"[]", &ASYMMETRIC_ALGORITHMS).is_err());
    }

    #[test]
    fn parses_algorithm_names() {
        assert_eq!(parse_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }
}
