//! End to end: the number of metric series is set by the policy, not by traffic. 10,000
//! distinct paths (routed, and unrouted) leave the series count as it was.

mod common;

use common::*;

fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("meshgate_"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_distinct_paths_add_no_series() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&route_to(echo, "").replacen(
        "path_prefix = \"/\"",
        "path_prefix = \"/in/\"",
        1,
    ));
    let client = client();
    // One of each kind first: the series for a 200 and a 404 exist from then on.
    for path in ["/in/warm", "/out/warm"] {
        let _ = client.get(gateway.url(path)).send().await.unwrap();
    }
    let before = series(&gateway.metrics().await);
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            let base = gateway.url("");
            tokio::spawn(async move {
                for i in 0..2500 {
                    let prefix = if i % 2 == 0 { "in" } else { "out" };
                    let url = format!("{base}/{prefix}/{t}-{i}?q={i}");
                    let status = client.get(url).send().await.unwrap().status().as_u16();
                    assert!(status == 200 || status == 404, "{status}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let after = series(&gateway.metrics().await);
    println!("metric series: {before} before, {after} after 10,000 distinct paths");
    assert_eq!(before, after);
}
