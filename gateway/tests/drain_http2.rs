//! End to end: a drain under HTTP/2 load: the client is sent a GOAWAY, every stream the
//! gateway received is answered, and the access log holds a line for each answer once the
//! process has exited (flushed, not lost in a buffer).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_under_http2_sends_goaway_and_flushes_the_access_log() {
    let echo = start_echo("app").await;
    let mut gateway = Gateway::start_with_server("drain_delay = \"1s\"", &route_to(echo, ""));
    let tcp = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move { connection.await.map_err(|e| e.to_string()) });
    let authority = gateway.listen;
    // Four streams at a time until the connection is told to go.
    let load = tokio::spawn(async move {
        let mut answered = 0u64;
        let mut refused = 0u64;
        let started = Instant::now();
        'outer: while started.elapsed() < Duration::from_secs(10) {
            let mut batch = Vec::new();
            for _ in 0..4 {
                let mut client = match client.clone().ready().await {
                    Ok(client) => client,
                    Err(_) => break 'outer,
                };
                let request = http::Request::get(format!("http://{authority}/x"))
                    .body(())
                    .unwrap();
                match client.send_request(request, true) {
                    Ok((response, _)) => batch.push(response),
                    Err(_) => break 'outer,
                }
            }
            for response in batch {
                match response.await {
                    Ok(response) if response.status() == 200 => {
                        let mut body = response.into_body();
                        while let Some(chunk) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
                        }
                        answered += 1;
                    }
                    // A stream refused by the GOAWAY never reached the gateway.
                    Err(e) if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                        refused += 1
                    }
                    other => panic!("a stream the gateway took failed: {other:?}"),
                }
            }
        }
        (answered, refused)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drained = client_post_drain(&gateway).await;
    assert!(drained, "POST /drain");
    let (answered, refused) = load.await.unwrap();
    let connection_end = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the connection ends")
        .unwrap();
    println!("HTTP/2 through a drain: {answered} streams answered, {refused} refused by the GOAWAY; the connection ended {connection_end:?}");
    assert!(answered > 100, "the load never moved");
    assert!(
        connection_end.is_ok(),
        "ended by GOAWAY, not torn down: {connection_end:?}"
    );
    assert!(
        tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(20))),
        "the drained process exits"
    );
    // Every answer is in the access log, written before the process exited.
    let logged = gateway
        .access_records()
        .iter()
        .filter(|r| r["path"] == "/x" && r["status"] == 200)
        .count() as u64;
    assert_eq!(
        logged, answered,
        "access log lines for the streams answered"
    );
}

async fn client_post_drain(gateway: &Gateway) -> bool {
    client()
        .post(gateway.admin_url("/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
