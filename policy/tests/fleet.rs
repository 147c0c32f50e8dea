//! A fleet node's policy: the local file and the fleet document validated as one, each error
//! with the document, line and path it is in; `[fleet]` itself.

use std::path::Path;

use meshgate_policy::fleet::Document;
use meshgate_policy::{load, load_with_fleet, FleetError};

mod common;
use common::*;

const LOCAL: &str = r#"version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
[telemetry]
metrics_listen = "127.0.0.1:9100"
[fleet]
etcd = ["http://127.0.0.1:2379", "https://etcd-2.internal:2379"]
prefix = "/meshgate/prod/"
node = "gw-1"
"#;

const FLEET: &str = r#"[telemetry]
access_log = "off"
[[upstreams]]
name = "orders"
endpoints = ["10.0.0.1:80"]
[[routes]]
name = "orders"
listeners = ["public"]
split = [{ upstream = "orders" }]
"#;

fn fleet_refused(local: &str, fleet: &str) -> Vec<FleetError> {
    load_with_fleet(local, fleet, Path::new(".")).expect_err("should be refused")
}

/// Asserts that `errors` has each `(document, line, path, message part)` of `expected`.
fn assert_fleet_errors(errors: &[FleetError], expected: &[(Document, usize, &str, &str)]) {
    for (document, line, path, message) in expected {
        assert!(
            errors.iter().any(|(d, e)| d == document
                && e.line == *line
                && e.path == *path
                && e.message.contains(message)),
            "missing {document:?} {line} {path} {message:?} in {errors:#?}"
        );
    }
}

#[test]
fn the_local_file_and_the_fleet_document_make_one_policy() {
    let policy = load_with_fleet(LOCAL, FLEET, Path::new(".")).expect("valid");
    assert_eq!(policy.routes[0].name, "orders");
    assert_eq!(policy.routes[0].listeners, Some(vec![0]));
    assert_eq!(policy.upstreams[0].name, "orders");
    assert!(policy.telemetry.metrics_listen.is_some());
    let fleet = policy.fleet.expect("[fleet]");
    assert_eq!(fleet.prefix, "/meshgate/prod");
    assert_eq!(fleet.node, "gw-1");
    assert_eq!(fleet.history, 50);
    // The local file alone is valid too: a node with no routes yet.
    let alone = load(LOCAL, Path::new(".")).expect("valid alone");
    assert!(alone.routes.is_empty());
}

#[test]
fn each_document_holds_only_its_sections() {
    let local = format!("{LOCAL}[[upstreams]]\nname = \"x\"\nendpoints = [\"10.0.0.9:80\"]\n");
    let local = local.replace(
        "metrics_listen = \"127.0.0.1:9100\"\n",
        "metrics_listen = \"127.0.0.1:9100\"\naccess_log = \"off\"\n",
    );
    let errors = refused(&local);
    assert_errors(
        &errors,
        &[
            (7, "telemetry.access_log", "comes from the fleet document"),
            (12, "upstreams", "comes from the fleet document"),
        ],
    );

    // Merged with a fleet document, the local file is held to the same rule.
    let errors = fleet_refused(&local, FLEET);
    assert_fleet_errors(
        &errors,
        &[(
            Document::Local,
            12,
            "upstreams",
            "comes from the fleet document",
        )],
    );

    let fleet = format!("{FLEET}[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\n");
    let fleet = fleet.replace(
        "access_log = \"off\"\n",
        "access_log = \"off\"\nmetrics_listen = \"127.0.0.1:9\"\n",
    );
    let errors = fleet_refused(LOCAL, &fleet);
    assert_fleet_errors(
        &errors,
        &[
            (
                Document::Fleet,
                3,
                "telemetry.metrics_listen",
                "local to each node",
            ),
            (Document::Fleet, 11, "listeners", "local to each node"),
        ],
    );
}

#[test]
fn errors_keep_their_document_line_and_path() {
    let fleet = FLEET
        .replace("listeners = [\"public\"]", "listeners = [\"internal\"]")
        .replace("10.0.0.1:80", "nope");
    let local = LOCAL.replace("127.0.0.1:8080", "oops");
    let errors = fleet_refused(&local, &fleet);
    assert_fleet_errors(
        &errors,
        &[
            (Document::Local, 4, "listeners[0].listen", "invalid address"),
            (
                Document::Fleet,
                5,
                "upstreams[0].endpoints[0]",
                "invalid address",
            ),
            (Document::Fleet, 8, "routes[0].listeners[0]", "internal"),
        ],
    );
    let syntax = fleet_refused(LOCAL, "[[routes]\n");
    assert!(
        syntax
            .iter()
            .all(|(d, e)| *d == Document::Fleet && e.line == 1),
        "{syntax:#?}"
    );
}

#[test]
fn bad_fleet_keys_are_all_reported() {
    let local = r#"version = 1
[fleet]
etcd = ["127.0.0.1:2379", "http://:2379"]
prefix = "meshgate"
node = "gw 1"
history = 0
tls = { cert = "missing.pem" }
username = "root"
"#;
    let errors = refused(local);
    assert_errors(
        &errors,
        &[
            (3, "fleet.etcd[0]", "expected http://host:port"),
            (3, "fleet.etcd[1]", "expected http://host:port"),
            (4, "fleet.prefix", "must start with \"/\""),
            (5, "fleet.node", "invalid name"),
            (6, "fleet.history", "between 1 and 1000"),
            (7, "fleet.tls.cert", "missing.pem"),
            (2, "fleet", "`username` and `password_file`"),
        ],
    );
}

#[test]
fn tcp_routes_come_from_the_fleet_document() {
    let local = LOCAL.replace(
        "[telemetry]",
        "[[listeners]]\nname = \"pg\"\nlisten = \"127.0.0.1:15432\"\nprotocol = \"tcp\"\n[telemetry]",
    );
    let fleet = format!(
        "{FLEET}[[tcp_routes]]\nname = \"pg\"\nlisteners = [\"pg\"]\nsplit = [{{ upstream = \"orders\" }}]\n"
    );
    let policy = load_with_fleet(&local, &fleet, Path::new(".")).expect("valid");
    assert_eq!(policy.tcp_route_for(1, None), Some(0));
    let errors = fleet_refused(
        &format!("{local}[[tcp_routes]]\nname = \"x\"\nsplit = [{{ upstream = \"orders\" }}]\n"),
        FLEET,
    );
    assert!(
        errors.iter().any(|(d, e)| *d == Document::Local
            && e.path == "tcp_routes"
            && e.message.contains("comes from the fleet document")),
        "{errors:#?}"
    );
}
