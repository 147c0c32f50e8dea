//! End to end: what a client's own headers and tokens can make an upstream believe. Headers
//! only the gateway sets (the identity header, the mirror mark, every header a route's
//! `jwt.forward_claims` names) are removed from every request on every route and listener,
//! and a route that names an issuer or audiences refuses a token without them.

mod common;

use serde_json::json;

use common::tokens::*;
use common::*;

/// Headers a client forges, as the upstream would read them.
const FORGED: &[(&str, &str)] = &[
    ("x-user-id", "admin"),
    ("x-team", "root"),
    ("x-meshgate-mirror", "1"),
    (
        "x-forwarded-client-cert",
        "URI=spiffe://evil.test/ns/x/sa/admin",
    ),
];

/// What the echo upstream saw of a GET of `url` with the forged headers.
async fn seen_with_forged_headers(client: &reqwest::Client, url: &str) -> String {
    let mut request = client.get(url);
    for (name, value) in FORGED {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_identity_and_mirror_headers_are_removed_on_every_route_and_listener() {
    let keys = tempfile::tempdir().unwrap();
    let key = SigningKey::ec("ec-1");
    let jwks_file = keys.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key])).unwrap();
    let echo = start_echo("app").await;
    let internal = format!("127.0.0.1:{}", free_port());
    let body = format!(
        r#"
[[listeners]]
name = "internal"
listen = "{internal}"

[[upstreams]]
name = "app"
endpoints = ["{echo}"]

# Only this route checks tokens and sets the claim headers.
[[routes]]
name = "api"
listeners = ["public"]
match = {{ path_prefix = "/api/" }}
rewrite = {{ path_prefix = "/headers/" }}
split = [{{ upstream = "app" }}]
jwt = {{ issuer = "https://idp.test", audiences = ["orders"], jwks_file = "{}", forward_claims = {{ sub = "x-user-id", team = "x-team" }} }}

# A public catch-all to the same upstream, on both listeners.
[[routes]]
name = "public"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "app" }}]
"#,
        jwks_file.display()
    );
    let gateway = Gateway::start(&body);
    let http1 = client();
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, url) in [
        (&http1, gateway.url("/headers/catch-all")),
        (&h2c, gateway.url("/headers/catch-all")),
        (&http1, format!("http://{internal}/headers/other-listener")),
    ] {
        let seen = seen_with_forged_headers(client, &url).await;
        println!("{url}: upstream saw\n{seen}");
        for (name, value) in FORGED {
            assert!(
                !seen.contains(&format!("{name}:")),
                "{url}: the client's {name}: {value} reached the upstream:\n{seen}"
            );
        }
        assert!(seen.contains("x-forwarded-for:"), "{seen}");
    }
    // The route that sets them still does, from the verified token only.
    let token = key.sign(claims("alice", json!({"team": "payments"})));
    let mut request = http1
        .get(gateway.url("/api/x"))
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in FORGED {
        request = request.header(*name, *value);
    }
    let seen = request.send().await.unwrap().text().await.unwrap();
    assert!(seen.contains("x-user-id: alice\n"), "{seen}");
    assert!(seen.contains("x-team: payments\n"), "{seen}");
    assert!(!seen.contains("admin") && !seen.contains("root"), "{seen}");
    assert!(!seen.contains("x-meshgate-mirror"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_with_issuer_and_audiences_refuses_tokens_without_them() {
    let keys = tempfile::tempdir().unwrap();
    let key = SigningKey::ec("ec-1");
    let jwks_file = keys.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key])).unwrap();
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "app" }}]
jwt = {{ issuer = "https://idp.test", audiences = ["orders", "billing"], jwks_file = "{}" }}
"#,
        jwks_file.display()
    ));
    let without = |claim: &str| {
        let mut claims = claims("alice", json!({}));
        claims.as_object_mut().unwrap().remove(claim);
        claims
    };
    let with = |claim: &str, value: serde_json::Value| claims("alice", json!({ claim: value }));
    let no_iss = "the token has no iss claim, or one that is not a string";
    let no_aud = "the token has no aud claim, or one that is not a string or a list of strings";
    let cases = [
        ("no iss", without("iss"), no_iss),
        ("iss a number", with("iss", json!(7)), no_iss),
        ("no aud", without("aud"), no_aud),
        ("aud a number", with("aud", json!(7)), no_aud),
        (
            "aud a list holding a number",
            with("aud", json!(["orders", 7])),
            no_aud,
        ),
        (
            "iss a list holding the issuer",
            with("iss", json!(["https://idp.test", "https://evil.test"])),
            "the token's iss claim is not a string",
        ),
        (
            "wrong iss",
            with("iss", json!("https://evil.test")),
            "wrong issuer",
        ),
        (
            "wrong aud",
            with("aud", json!(["shipping"])),
            "wrong audience",
        ),
    ];
    let http = client();
    for (case, claims, detail) in cases {
        let token = key.sign(claims);
        let response = http
            .get(gateway.url("/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let reason = response.headers().get("x-meshgate-reason").cloned();
        let body: serde_json::Value = response.json().await.unwrap();
        println!("{case}: {status} {body}");
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(reason.unwrap(), "jwt-invalid", "{case}");
        assert_eq!(body["detail"], detail, "{case}");
    }
    // Without either, the detail names one of them (the one checked first).
    let mut neither = without("iss");
    neither.as_object_mut().unwrap().remove("aud");
    let response = http
        .get(gateway.url("/x"))
        .header("authorization", format!("Bearer {}", key.sign(neither)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"] == no_iss || body["detail"] == no_aud,
        "{body}"
    );
    // Valid tokens still pass: `aud` as a string or as a list.
    for aud in [json!("billing"), json!(["shipping", "orders"])] {
        let token = key.sign(with("aud", aud.clone()));
        let response = http
            .get(gateway.url("/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "aud {aud}");
    }
    // HMAC and `none` stay refused.
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice", json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(claims("alice", json!({})).to_string().as_bytes());
    let unsigned = format!("{header}.{payload}.");
    for (token, detail) in [
        (hmac.as_str(), "algorithm HS256 is not accepted"),
        (unsigned.as_str(), "malformed token"),
    ] {
        let response = http
            .get(gateway.url("/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["detail"], detail);
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
