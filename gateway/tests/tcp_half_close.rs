//! End to end: a TCP route carries a half-close from the upstream's side. The upstream says
//! its last words and shuts its writing side; the client reads them and the end of stream,
//! and can still send: its bytes reach the upstream, which sees the client's end in turn.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_closing_its_side_first_leaves_the_clients_side_open() {
    // The upstream: "bye\n", then shuts down its writing side, then reads to the end.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut socket, _) = upstream.accept().await.unwrap();
        socket.write_all(b"bye\n").await.unwrap();
        socket.shutdown().await.unwrap();
        let mut heard = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut heard)).await;
        let _ = heard_tx.send(heard);
    });
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start(&format!(
        r#"
[[listeners]]
name = "raw"
listen = "{listen}"
protocol = "tcp"

[[upstreams]]
name = "closer"
endpoints = ["{upstream_addr}"]

[[tcp_routes]]
name = "closer"
listeners = ["raw"]
split = [{{ upstream = "closer" }}]
"#
    ));
    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut said))
        .await
        .expect("the upstream's end of stream reaches the client")
        .unwrap();
    assert_eq!(said, b"bye\n");
    // The client's side is still open: what it sends now reaches the upstream.
    client.write_all(b"after your close\n").await.unwrap();
    client.shutdown().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), heard_rx)
        .await
        .expect("the upstream sees the client's end")
        .unwrap();
    println!(
        "the upstream heard {:?} after closing its side",
        String::from_utf8_lossy(&heard)
    );
    assert_eq!(heard, b"after your close\n");
    drop(gateway);
}
