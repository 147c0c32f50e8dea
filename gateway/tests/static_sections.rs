//! End to end: a policy that changes a static section is applied for everything else, and
//! `restart_required` (in the answer and in `meshgate_restart_required{section}`) names that
//! section and no other, for each of `[server]`, `[admin]`, the listeners and
//! `[telemetry].metrics_listen` (`[fleet]` in tests/fleet_node.rs).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_static_section_is_named_in_restart_required() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&route_to(echo, ""));
    let base = gateway.policy_with_body(&route_to(echo, "timeouts = { request = \"9s\" }"));
    let moved = format!("127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    for (section, policy) in [
        ("server", base.replacen("threads = 2", "threads = 3", 1)),
        (
            "admin",
            base.replacen("[admin]\n", "[admin]\nhistory = 7\n", 1),
        ),
        (
            "listeners",
            base.replacen(&gateway.listen.to_string(), &moved, 1),
        ),
        (
            "telemetry.metrics_listen",
            base.replacen(
                "[telemetry]\n",
                &format!("[telemetry]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
                1,
            ),
        ),
    ] {
        assert_ne!(policy, base, "{section}: the policy changed");
        let applied = gateway.apply_policy(policy).await;
        println!("{section}: {applied}");
        assert_eq!(
            applied["restart_required"],
            serde_json::json!([section]),
            "{applied}"
        );
        let metrics = gateway.metrics().await;
        let gauge = format!("meshgate_restart_required{{section=\"{section}\"}} 1");
        assert!(metrics.contains(&gauge), "{gauge} not in the metrics");
        // Everything else applied: the route's timeout is the new one.
        let config = gateway.admin_json("/config?format=json").await;
        assert_eq!(config["routes"][0]["timeouts"]["request"], "9s", "{config}");
        // And back: nothing waits for a restart any more.
        let back = gateway
            .apply_policy(gateway.policy_with_body(&route_to(echo, "")))
            .await;
        assert_eq!(back["restart_required"], serde_json::json!([]), "{back}");
    }
    // The process still serves on the address it was started with.
    assert_eq!(http_status(gateway.listen, "/"), Some(200));
}
