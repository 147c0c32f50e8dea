//! Bearer-token authentication (a route's `jwt`): the token in `Authorization: Bearer` is
//! verified against the issuer's public keys (from a file, or fetched from a URL by
//! [`jwks`]), then its `iss`, `aud`, `exp` and `nbf` are checked. What the check decides and
//! why is counted and returned; the request path never waits on a fetch.

pub mod jwks;
mod token_cache;

use std::borrow::Cow;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use meshgate_policy::jwt::{JwksSource, Jwt, ASYMMETRIC_ALGORITHMS};
use pingora::http::RequestHeader;
use prometheus::IntCounter;

use crate::telemetry::Metrics;
pub use jwks::JwksRegistry;
use jwks::RemoteKeys;
use token_cache::TokenCache;

/// Claims of a verified token.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// One verification key.
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The usable keys of a JWKS document, ready to verify.
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// The keys of `set` that can verify an asymmetric algorithm; the others are left out.
    pub fn new(set: &JwkSet) -> KeySet {
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let algorithms =
                    meshgate_policy::jwt::key_algorithms(jwk, &ASYMMETRIC_ALGORITHMS).ok()?;
                Some(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    algorithms,
                    key: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        KeySet { keys }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

/// Where a route's keys are read from at each request.
enum Keys {
    Fixed(Arc<KeySet>),
    Fetched(Arc<RemoteKeys>),
}

/// What the check of a request's token decided.
pub enum Verdict {
    /// A valid token, with its claims.
    Valid(Arc<Claims>),
    /// No token, and none is required.
    Anonymous,
    /// No token, and one is required.
    Missing,
    /// A token that is refused, and why (never the token itself).
    Invalid(Cow<'static, str>),
}

/// A route's JWT check: its keys, a validation per accepted algorithm, and its counters.
pub struct JwtVerifier {
    keys: Keys,
    /// Built once: `jsonwebtoken` wants the algorithms of one validation to share the key's
    /// family, so each accepted algorithm has its own.
    validations: Vec<(Algorithm, Validation)>,
    required: bool,
    /// Whether the route names an issuer: `iss` must then be one string (jsonwebtoken also
    /// takes a list that holds it).
    issuer: bool,
    leeway: u64,
    /// Tokens verified lately: a client sends the same token with many requests, and a
    /// signature check costs hundreds of thousands of instructions.
    verified: TokenCache,
    counters: [IntCounter; 4],
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// The check of `jwt` on route `route`; a `jwks_url` is fetched through `registry`.
    pub fn new(jwt: &Jwt, route: &str, registry: &JwksRegistry, metrics: &Metrics) -> Self {
        let keys = match &jwt.keys {
            JwksSource::File { keys, .. } => Keys::Fixed(Arc::new(KeySet::new(keys))),
            JwksSource::Url(url) => Keys::Fetched(registry.source(url, metrics)),
        };
        let validations = jwt
            .algorithms
            .iter()
            .map(|alg| {
                let mut validation = Validation::new(*alg);
                validation.leeway = jwt.leeway.as_secs();
                validation.validate_nbf = true;
                // A claim the route checks must be there: jsonwebtoken otherwise passes a token
                // that leaves out `iss` or `aud`, or gives one of the wrong type.
                let mut required = vec!["exp"];
                if let Some(issuer) = &jwt.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                if jwt.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&jwt.audiences);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                (*alg, validation)
            })
            .collect();
        let counter = |result: &str| metrics.jwt_validations.with_label_values(&[route, result]);
        JwtVerifier {
            keys,
            validations,
            required: jwt.required,
            issuer: jwt.issuer.is_some(),
            leeway: jwt.leeway.as_secs(),
            verified: TokenCache::default(),
            counters: [
                counter("valid"),
                counter("anonymous"),
                counter("missing"),
                counter("invalid"),
            ],
        }
    }

    /// For keys from a `jwks_url`: how many the last good fetch gave (`None` before the
    /// first). `None` for keys from a file.
    pub fn fetched_keys(&self) -> Option<Option<usize>> {
        match &self.keys {
            Keys::Fixed(_) => None,
            Keys::Fetched(remote) => Some(remote.keys().map(|keys| keys.len())),
        }
    }

    /// Checks the request's bearer token and counts the verdict.
    pub fn verify(&self, header: &RequestHeader) -> Verdict {
        let verdict = self.decide(header);
        let slot = match verdict {
            Verdict::Valid(_) => 0,
            Verdict::Anonymous => 1,
            Verdict::Missing => 2,
            Verdict::Invalid(_) => 3,
        };
        self.counters[slot].inc();
        verdict
    }

    fn decide(&self, header: &RequestHeader) -> Verdict {
        let mut values = header.headers.get_all(http::header::AUTHORIZATION).iter();
        let token = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                return Verdict::Invalid("more than one Authorization header".into())
            }
            (Some(value), None) => bearer_token(value.as_bytes()),
        };
        let Some(token) = token else {
            // No bearer token (none, or another scheme): anonymous where that is allowed.
            return if self.required {
                Verdict::Missing
            } else {
                Verdict::Anonymous
            };
        };
        let generation = match &self.keys {
            Keys::Fixed(_) => 0,
            Keys::Fetched(remote) => remote.generation(),
        };
        if let Some(claims) = self.verified.get(token, generation) {
            return Verdict::Valid(claims);
        }
        let Ok(token_header) = jsonwebtoken::decode_header(token) else {
            return Verdict::Invalid("malformed token".into());
        };
        let Some((_, validation)) = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == token_header.alg)
        else {
            return Verdict::Invalid(
                format!("algorithm {:?} is not accepted", token_header.alg).into(),
            );
        };
        let fetched;
        let keys: &KeySet = match &self.keys {
            Keys::Fixed(keys) => keys,
            Keys::Fetched(remote) => {
                fetched = remote.keys();
                match fetched.as_deref() {
                    Some(keys) => keys,
                    None => return Verdict::Invalid("the signing keys are not fetched yet".into()),
                }
            }
        };
        let mut candidates = keys
            .keys
            .iter()
            .filter(|key| key.algorithms.contains(&token_header.alg))
            .filter(|key| {
                // A key without `kid` may have signed any token.
                token_header.kid.is_none() || key.kid.is_none() || key.kid == token_header.kid
            })
            .peekable();
        if candidates.peek().is_none() {
            return Verdict::Invalid(match &token_header.kid {
                Some(_) => "no key has the token's kid".into(),
                None => "no key for the token's algorithm".into(),
            });
        }
        let mut last = Cow::Borrowed("bad signature");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => {
                    if self.issuer && !data.claims.get("iss").is_some_and(|v| v.is_string()) {
                        return Verdict::Invalid("the token's iss claim is not a string".into());
                    }
                    let claims = Arc::new(data.claims);
                    // `exp` is required, so every valid token has one.
                    if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) {
                        let until = exp.saturating_add(self.leeway);
                        self.verified.insert(token, &claims, until, generation);
                    }
                    return Verdict::Valid(claims);
                }
                // Another key of the set may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    last = explain(e.kind());
                    break;
                }
            }
        }
        Verdict::Invalid(last)
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What a refused token is told, in a few words.
fn explain(kind: &ErrorKind) -> Cow<'static, str> {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => "the token has no iss claim, or one that is not a string".into(),
            "aud" => "the token has no aud claim, or one that is not a string or a list of strings"
                .into(),
            _ => format!("the token has no {claim} claim").into(),
        },
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "the algorithm does not fit the key".into(),
        _ => "malformed token".into(),
    }
}

/// The text of a claim as sent in a header: a string as it is, anything else as JSON.
pub fn claim_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_tokens_in_any_case() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
    }
}
