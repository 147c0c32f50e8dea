//! End to end: `/explain` without `listener=` reads each route's `listeners`. A redirect kept
//! to the plain listener comes first and the shop serves the TLS one: the answer says which
//! listener it assumed and what every listener would do, instead of answering the redirect
//! as if no route were kept to a listener.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn explain_without_a_listener_reads_each_routes_listeners() {
    let echo = start_echo("shop").await;
    let https = format!("127.0.0.1:{}", free_port());
    let gateway = Gateway::start(&format!(
        r#"
[[listeners]]
name = "https"
listen = "{https}"

[[upstreams]]
name = "shop"
endpoints = ["{echo}"]

[[routes]]
name = "to-https"
listeners = ["public"]
redirect = {{ scheme = "https" }}

[[routes]]
name = "shop"
listeners = ["https"]
match = {{ host = "shop.example.test" }}
split = [{{ upstream = "shop" }}]
"#
    ));
    let explained = gateway
        .admin_json("/explain?host=shop.example.test&path=/cart")
        .await;
    println!("{explained:#}");
    assert_eq!(
        explained["listener"], "public",
        "the listener assumed is named"
    );
    assert_eq!(explained["matched"], "to-https");
    assert_eq!(
        explained["by_listener"],
        serde_json::json!([
            { "listener": "public", "matched": "to-https" },
            { "listener": "https", "matched": "shop" },
        ])
    );
    // On the listener the shop serves, the redirect is skipped for its listeners.
    let on_https = gateway
        .admin_json("/explain?host=shop.example.test&path=/cart&listener=https")
        .await;
    assert_eq!(on_https["listener"], "https");
    assert_eq!(on_https["matched"], "shop");
    assert!(on_https.get("by_listener").is_none(), "{on_https}");
    assert_eq!(on_https["routes"][0]["result"], "skipped");
    // The data plane agrees: the https listener serves the shop.
    let response = client()
        .get(format!("http://{https}/cart"))
        .header("host", "shop.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-server"], "shop");
}
