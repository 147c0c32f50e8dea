//! End to end: a route's `jwt` (issue 17, item 5). Tokens are signed in the test with RSA
//! (openssl), P-256 and Ed25519 keys (rcgen) made here; the JWKS comes from a file, or from
//! NGINX over TLS with a private CA, which the test stops and restarts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use common::nginx::start_nginx_files;
use common::pki::Authority;
use common::tokens::*;
use common::*;

/// GET `path` with `token` as a bearer token (none when empty) and `extra` headers; returns
/// status, headers and body.
async fn get(
    gateway: &Gateway,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client().get(gateway.url(path));
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// Asserts a `401 jwt-invalid` whose body's detail is `detail` and that does not hold `token`.
async fn assert_refused(gateway: &Gateway, path: &str, token: &str, detail: &str) {
    let (status, headers, body) = get(gateway, path, token, &[]).await;
    assert_eq!(status, 401, "{path} with {detail:?}: {body}");
    assert_eq!(headers["x-meshgate-reason"], "jwt-invalid");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"meshgate\""),
        "{challenge}"
    );
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reason"], "jwt-invalid");
    assert_eq!(answer["detail"], detail, "{body}");
    if !token.is_empty() {
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(!body.contains(token) && !challenge.contains(token));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_verified_against_a_jwks_file_and_their_claims_forwarded_and_authorized() {
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = SigningKey::rsa(keys_dir.path(), "rsa-1");
    let ec = SigningKey::ec("ec-1");
    let ed = SigningKey::ed("ed-1");
    let stranger = SigningKey::ec("ec-1"); // same kid, another key: a forged signature
    let jwks_file = keys_dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&rsa, &ec, &ed])).unwrap();
    let echo = start_echo("app").await;
    let jwt = format!(
        r#"issuer = "https://idp.test", audiences = ["orders", "billing"], jwks_file = "{}""#,
        jwks_file.display()
    );
    let routes = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
rewrite = {{ path_prefix = "/headers/" }}
split = [{{ upstream = "app" }}]
jwt = {{ {jwt}, forward_claims = {{ sub = "x-user-id", team = "x-team" }}, forward_token = false }}

[[routes]]
name = "optional"
match = {{ path_prefix = "/optional/" }}
rewrite = {{ path_prefix = "/headers/" }}
split = [{{ upstream = "app" }}]
jwt = {{ {jwt}, required = false, forward_claims = {{ sub = "x-user-id" }} }}

[[routes]]
name = "payments"
match = {{ path_prefix = "/payments/" }}
split = [{{ upstream = "app" }}]
jwt = {{ {jwt} }}
allow = ["jwt:claim:team=payments", "jwt:sub:root"]
"#
    );
    let gateway = Gateway::start(&routes);

    // Each key type verifies; claims go upstream, forged copies and the token do not.
    for key in [&rsa, &ec, &ed] {
        let token = key.sign(claims("alice", json!({"team": "payments"})));
        let (status, headers, seen) = get(
            &gateway,
            "/api/x",
            &token,
            &[("x-user-id", "mallory"), ("x-team", "admins")],
        )
        .await;
        assert_eq!(status, 200, "{:?}: {seen}", key.alg);
        assert!(headers.get("x-meshgate-reason").is_none());
        assert!(seen.contains("x-user-id: alice\n"), "{seen}");
        assert!(seen.contains("x-team: payments\n"), "{seen}");
        assert!(
            !seen.contains("mallory") && !seen.contains("admins"),
            "{seen}"
        );
        assert!(
            !seen.contains("authorization"),
            "forward_token = false: {seen}"
        );
    }
    // The scheme is case-insensitive (RFC 7235); the token goes upstream by default.
    let token = ec.sign(claims("bob", json!({})));
    let response = client()
        .get(gateway.url("/optional/x"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = response.text().await.unwrap();
    assert!(
        seen.contains("x-user-id: bob\n") && seen.contains("authorization: bearer"),
        "{seen}"
    );

    // Refusals say what failed, never echo the token.
    assert_refused(&gateway, "/api/x", "", "no bearer token").await;
    let (_, headers, _) = get(&gateway, "/api/x", "", &[]).await;
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"meshgate\"");
    let expired = ec.sign(claims(
        "alice",
        json!({"iat": now() - 7200, "exp": now() - 3600}),
    ));
    assert_refused(&gateway, "/api/x", &expired, "token expired").await;
    let early = ed.sign(claims("alice", json!({"nbf": now() + 3600})));
    assert_refused(&gateway, "/api/x", &early, "token not valid yet (nbf)").await;
    let within_leeway = ed.sign(claims("alice", json!({"exp": now() - 10})));
    assert_eq!(
        get(&gateway, "/api/x", &within_leeway, &[]).await.0,
        200,
        "60s leeway"
    );
    let other_audience = rsa.sign(claims("alice", json!({"aud": "shipping"})));
    assert_refused(&gateway, "/api/x", &other_audience, "wrong audience").await;
    let second_audience = rsa.sign(claims("alice", json!({"aud": ["billing", "x"]})));
    assert_eq!(get(&gateway, "/api/x", &second_audience, &[]).await.0, 200);
    let other_issuer = rsa.sign(claims("alice", json!({"iss": "https://evil.test"})));
    assert_refused(&gateway, "/api/x", &other_issuer, "wrong issuer").await;
    let forged = stranger.sign(claims("alice", json!({})));
    assert_refused(&gateway, "/api/x", &forged, "bad signature").await;
    let mut no_exp = claims("alice", json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(
        &gateway,
        "/api/x",
        &ec.sign(no_exp),
        "the token has no exp claim",
    )
    .await;
    let unknown_kid = SigningKey::ec("ec-9").sign(claims("alice", json!({})));
    assert_refused(
        &gateway,
        "/api/x",
        &unknown_kid,
        "no key has the token's kid",
    )
    .await;
    let hmac = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", json!({})),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_refused(&gateway, "/api/x", &hmac, "algorithm HS256 is not accepted").await;
    // An unsigned token (`alg: none`) is malformed to jsonwebtoken: refused all the same.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("alice", json!({})).to_string())
    );
    assert_refused(&gateway, "/api/x", &unsigned, "malformed token").await;
    assert_refused(&gateway, "/api/x", "not.a-token", "malformed token").await;

    // required = false: anonymous passes (without claim headers, forged ones stripped), a
    // bad token is still refused.
    let (status, _, seen) = get(&gateway, "/optional/x", "", &[("x-user-id", "mallory")]).await;
    assert_eq!(status, 200);
    assert!(!seen.contains("x-user-id"), "{seen}");
    assert_refused(&gateway, "/optional/x", &expired, "token expired").await;

    // allow with JWT entries: a claim (in a list too) or a subject lets in, others get 403.
    let payments = ec.sign(claims("carol", json!({"team": ["ops", "payments"]})));
    assert_eq!(get(&gateway, "/payments/x", &payments, &[]).await.0, 200);
    let root = ec.sign(claims("root", json!({"team": "ops"})));
    assert_eq!(get(&gateway, "/payments/x", &root, &[]).await.0, 200);
    let ops = ec.sign(claims("dave", json!({"team": "ops"})));
    let (status, headers, _) = get(&gateway, "/payments/x", &ops, &[]).await;
    assert_eq!(
        (status, &headers["x-meshgate-reason"]),
        (403, &"forbidden".parse().unwrap())
    );

    // /routes and /explain show the check; the verdicts are counted.
    let routes = gateway.admin_json("/routes").await;
    let api = &routes["routes"][0];
    let described = api["jwt"].as_str().unwrap();
    assert!(
        described.contains("issuer https://idp.test") && described.contains("(3 keys)"),
        "{described}"
    );
    assert_eq!(
        routes["routes"][2]["allow"],
        json!(["jwt:claim:team=payments", "jwt:sub:root"])
    );
    let explained = gateway.admin_json("/explain?path=/payments/x").await;
    let checks = explained["checks"].to_string();
    assert!(
        checks.contains("jwt: issuer") && checks.contains("jwt:sub:root"),
        "{checks}"
    );
    let metrics = gateway.metrics().await;
    let count = |labels: &str| {
        metric_sum(
            &metrics,
            &format!("meshgate_jwt_validations_total{{{labels}}}"),
        )
    };
    assert_eq!(count(r#"result="valid",route="api""#), 5.0, "{metrics}");
    assert_eq!(count(r#"result="missing",route="api""#), 2.0);
    assert_eq!(count(r#"result="invalid",route="api""#), 10.0);
    assert_eq!(count(r#"result="anonymous",route="optional""#), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_from_a_jwks_url_are_fetched_kept_while_it_is_down_and_refreshed() {
    let _lock = load_test_lock();
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "idp-ca");
    let server = ca.server(dir.path(), "idp", "idp", &["localhost"]);
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join(".well-known")).unwrap();
    let jwks_path = root.join(".well-known/jwks.json");
    let first = SigningKey::ec("k1");
    let second = SigningKey::ed("k2");
    std::fs::write(&jwks_path, jwks(&[&first])).unwrap();
    let port = free_port();
    let mut idp = Some(start_nginx_files(
        &dir.path().join("nginx"),
        &server,
        port,
        &root,
        "max-age=1",
    ));
    let echo = start_echo("app").await;
    let routes = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "app" }}]
jwt = {{ issuer = "https://idp.test", jwks_url = "https://localhost:{port}/.well-known/jwks.json", jwks_ca = "{}", min_refresh = "1s", max_refresh = "10s" }}
"#,
        ca.file.display()
    );
    let gateway = Gateway::start(&routes);
    let token_one = first.sign(claims("alice", json!({})));
    let token_two = second.sign(claims("alice", json!({})));

    // Fetched in the background soon after start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gateway, "/x", &token_one, &[]).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the JWKS was not fetched: {}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let routes = gateway.admin_json("/routes").await;
    assert!(routes["routes"][0]["jwt"]
        .as_str()
        .unwrap()
        .contains("(1 keys fetched)"));

    // The identity provider goes away: the keys fetched are kept, failures are counted.
    drop(idp.take());
    let failed_fetches = gateway
        .wait_for_metric(
            r#"meshgate_jwks_fetches_total{result="error""#,
            2.0,
            Duration::from_secs(15),
        )
        .await;
    assert!(
        failed_fetches >= 2.0,
        "failed fetches counted: {failed_fetches}"
    );
    assert_eq!(get(&gateway, "/x", &token_one, &[]).await.0, 200);
    assert_eq!(
        get(&gateway, "/x", &token_two, &[]).await.0,
        401,
        "k2 is not published yet"
    );

    // It comes back with a rotated set: the new key is picked up within the refresh bounds.
    std::fs::write(&jwks_path, jwks(&[&second])).unwrap();
    idp = Some(start_nginx_files(
        &dir.path().join("nginx"),
        &server,
        port,
        &root,
        "max-age=1",
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&gateway, "/x", &token_two, &[]).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new JWKS was not fetched: {}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_refused(&gateway, "/x", &token_one, "no key has the token's kid").await;
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, r#"meshgate_jwks_fetches_total{result="ok""#) >= 2.0,
        "{metrics}"
    );
    drop(idp);
}

#[test]
fn check_lists_every_bad_jwt_key_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret.json"),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(
        &policy,
        r#"version = 1

[[listeners]]
name = "public"
listen = "127.0.0.1:1"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:2"]

[[routes]]
name = "a"
match = { path_prefix = "/" }
split = [{ upstream = "app" }]
jwt = { jwks_file = "secret.json", forward_claims = { sub = "host" } }
allow = ["jwt:claim:team"]

[[routes]]
name = "b"
split = [{ upstream = "app" }]
jwt = { jwks_url = "ftp://idp/jwks", algorithms = ["HS256"], min_refresh = "10ms" }

[[routes]]
name = "c"
split = [{ upstream = "app" }]
allow = ["jwt:sub:alice"]
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    for expected in [
        "routes[0].jwt.jwks_file:",
        "symmetric (oct) key is not accepted",
        "routes[0].jwt.forward_claims.sub: a claim can't be forwarded in \"host\"",
        "routes[0].allow[0]: \"jwt:claim:team\": expected jwt:claim:<name>=<value>",
        "routes[1].jwt.jwks_url: \"ftp://idp/jwks\": the scheme must be https or http",
        "routes[1].jwt.algorithms[0]: unknown or unaccepted algorithm \"HS256\"",
        "routes[1].jwt.min_refresh: min_refresh must be at least 1s",
        "routes[2].allow[0]: \"jwt:sub:alice\" names a JWT claim, but the route has no `jwt`",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
