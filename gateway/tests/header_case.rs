//! `[server].preserve_header_case`: HTTP/1.1 header names are forwarded in normal form by
//! default (the common ones titled, the rest lowercase, as Envoy and HAProxy do), and in the
//! case they arrived in when the key is true, both ways: client to upstream, upstream to
//! client. Raw sockets on both sides, so that the bytes on the wire are what is checked.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::*;
use common::*;

const REQUEST: &[u8] =
    b"GET /case HTTP/1.1\r\nHost: test\r\nX-Custom-Thing: a\r\nACCEPT: */*\r\nconnection: close\r\n\r\n";

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Thing: b\r\nCACHE-CONTROL: no-store\r\n\r\nok";

/// Sends `REQUEST` through a gateway with `server_keys` to an upstream answering `RESPONSE`;
/// returns the request head the upstream read and the response the client read.
async fn exchange(server_keys: &str) -> (String, String) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let (upstream, _counts) = scripted_upstream(move |_, head| {
        seen.lock().unwrap().push(head.to_string());
        Reply::keep(RESPONSE.to_vec())
    })
    .await;
    let gateway = Gateway::start_with_server(server_keys, &route_to(upstream, ""));
    let answer = raw_exchange(gateway.listen, REQUEST, Duration::from_secs(5)).await;
    let upstream_head = heads.lock().unwrap().first().cloned().unwrap_or_default();
    println!(
        "upstream read:\n{upstream_head}\nclient read:\n{}",
        answer.text()
    );
    assert_eq!(answer.statuses(), vec![200]);
    assert_eq!(answer.body(), b"ok");
    (upstream_head, answer.text())
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_are_forwarded_in_normal_form_by_default() {
    let (upstream_head, client_answer) = exchange("").await;
    assert!(upstream_head.contains("\r\nx-custom-thing: a\r\n"));
    assert!(upstream_head.contains("\r\naccept: */*\r\n"));
    assert!(upstream_head.contains("\r\nHost: test\r\n"));
    assert!(client_answer.contains("\r\nx-upstream-thing: b\r\n"));
    assert!(client_answer.contains("\r\nCache-Control: no-store\r\n"));
    assert!(client_answer.contains("\r\nContent-Length: 2\r\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_keep_their_case_when_asked() {
    let (upstream_head, client_answer) = exchange("preserve_header_case = true\n").await;
    assert!(upstream_head.contains("\r\nX-Custom-Thing: a\r\n"));
    assert!(upstream_head.contains("\r\nACCEPT: */*\r\n"));
    assert!(client_answer.contains("\r\nX-Upstream-Thing: b\r\n"));
    assert!(client_answer.contains("\r\nCACHE-CONTROL: no-store\r\n"));
}
