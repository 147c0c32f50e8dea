//! The files that ship meshgate: the systemd unit, the Docker policy, the compose stack's
//! Prometheus config and Grafana dashboard. Everything that can be checked without a Docker
//! engine or systemd as PID 1 is checked here with the real tools.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (installed by `make deps`)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

/// `systemd-analyze verify` passes on the unit as shipped, with the binary where the unit
/// expects it (here: the one just built), and the unit keeps its hardening.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("systemd/meshgate.service")).unwrap();
    for key in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=meshgate",
        "ConfigurationDirectory=meshgate",
        "StateDirectory=meshgate",
        "LimitNOFILE=",
        "ExecReload=",
        "--upgrade",
    ] {
        assert!(unit.contains(key), "the unit lost {key}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/meshgate", env!("CARGO_BIN_EXE_meshgate")),
    )
    .unwrap();
    let output = run(bounded(60, "systemd-analyze").arg("verify").arg(&path));
    assert!(output.trim().is_empty(), "systemd-analyze verify: {output}");
    // The exposure score (0 is best, 10 worst); systemd rates up to 2.0 as "OK".
    let security = bounded(60, "systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure score:\n{report}"));
    eprintln!("{overall}");
    let score: f64 = overall
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a score");
    assert!(score <= 2.0, "{overall}");
}

/// The image's policy is valid (`meshgate check`), and so is the compose stack around it.
#[test]
fn the_docker_files_are_valid() {
    let docker = repo().join("docker");
    let checked = run(Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(docker.join("meshgate.toml")));
    assert!(checked.contains("ok"), "{checked}");
    run(bounded(60, "promtool")
        .args(["check", "config"])
        .arg(docker.join("prometheus.yml")));
    let config = run(bounded(60, "docker-compose")
        .arg("-f")
        .arg(docker.join("compose.yaml"))
        .arg("config"));
    for service in [
        "meshgate:",
        "prometheus:",
        "grafana:",
        "jaeger:",
        "shop-v2:",
    ] {
        assert!(config.contains(service), "{config}");
    }
    let dockerfile = std::fs::read_to_string(docker.join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "a build stage and a runtime stage"
    );
    assert!(dockerfile.contains(" AS build") && dockerfile.contains("COPY --from=build"));
    assert!(dockerfile.contains("\nUSER meshgate"));
    assert!(dockerfile.contains("\nHEALTHCHECK ") && dockerfile.contains("/healthz"));
    // Every file the Dockerfile copies from the build context exists.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY") && !l.contains("--from"))
    {
        let source = line.split_whitespace().rev().nth(1).unwrap();
        if source != "." {
            assert!(repo().join(source).exists(), "{line}");
        }
    }
}

/// Every metric the Grafana dashboard queries is one the gateway exports, and every query
/// parses as PromQL (promtool's rule checker).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_queries_real_metrics() {
    let text =
        std::fs::read_to_string(repo().join("docker/grafana/dashboards/meshgate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 15, "{} queries", exprs.len());

    // Families with samples on a live gateway, and every registered one.
    let v1 = start_echo("v1").await;
    let gateway = Gateway::start(&split_policy(v1, v1, 1, 0));
    client().get(gateway.url("/")).send().await.unwrap();
    let scraped = gateway.metrics().await;
    let mut known: BTreeSet<String> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    known.extend(
        meshgate::telemetry::Metrics::new()
            .family_names()
            .iter()
            .cloned(),
    );

    let name = regex::Regex::new(r"meshgate_[a-z_]+").unwrap();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for m in name.find_iter(expr) {
            let family = m.as_str();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| family.strip_suffix(s))
                .unwrap_or(family);
            assert!(
                known.contains(base),
                "the dashboard queries {family}, which meshgate does not export"
            );
            used.insert(base.to_owned());
        }
    }
    eprintln!("{} queries over {} families", exprs.len(), used.len());

    // promtool parses each query when it is a recording rule.
    let dir = tempfile::tempdir().unwrap();
    let grafana_vars = |e: &str| e.replace("$__rate_interval", "1m").replace("$route", ".*");
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:q{i}\n        expr: '{}'\n",
                grafana_vars(e)
            )
        })
        .collect();
    let rules_file = dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    run(bounded(60, "promtool")
        .args(["check", "rules"])
        .arg(&rules_file));
}
