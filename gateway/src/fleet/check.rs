//! `meshgate check --fleet DOC [--local NODE.toml]`: a fleet document checked offline, the way
//! CI lints it before a push, with no etcd.
//!
//! With `--local`, the document is merged with the node's file exactly as the node merges it,
//! and every error is one the node would give. Alone, it is merged with a stand-in node file
//! that has each listener the document names (HTTP for `[[routes]]`, TCP for
//! `[[tcp_routes]]`, passthrough when they match by `sni`) and allows every file: whatever
//! depends on a node (its listeners, its `[fleet].files_dir`) is checked with `--local`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use meshgate_policy::fleet::Document;

use crate::files::base_dir_of;

/// Checks `document`, alone or with `local`; prints its errors as `FILE:LINE:COLUMN: path:
/// message` and exits 1, or says `ok`.
pub fn check(document: &Path, local: Option<&Path>) -> ExitCode {
    let read = |file: &Path| {
        meshgate_policy::files::read_policy_file(file)
            .map_err(|e| eprintln!("{}: cannot read: {e}", file.display()))
    };
    let Ok(text) = read(document) else {
        return ExitCode::FAILURE;
    };
    let doc_name = document.display().to_string();
    // A document that is not a fleet document says so first, alone.
    let shape = meshgate_policy::check_fleet_document(&text);
    if !shape.is_empty() {
        for error in &shape {
            eprintln!("{}", error.display_with_file(&doc_name));
        }
        eprintln!("{doc_name}: {} error(s)", shape.len());
        return ExitCode::FAILURE;
    }
    let (local_text, local_name, base_dir) = match local {
        Some(file) => {
            let Ok(local_text) = read(file) else {
                return ExitCode::FAILURE;
            };
            (local_text, file.display().to_string(), base_dir_of(file))
        }
        None => (
            stand_in_node(&text),
            "(stand-in node file)".to_owned(),
            base_dir_of(document),
        ),
    };
    match super::compile(&local_text, &text, &base_dir) {
        Ok(_) => {
            match local {
                Some(_) => println!("{doc_name}: ok with {local_name}"),
                None => {
                    println!("{doc_name}: ok (alone: listeners and files are checked with --local)")
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for (place, error) in &errors {
                let file = match place {
                    Document::Fleet => &doc_name,
                    Document::Local => &local_name,
                };
                eprintln!("{}", error.display_with_file(file));
            }
            eprintln!("{doc_name}: {} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// A node file with every listener `document` names, in a fleet whose nodes allow every file.
fn stand_in_node(document: &str) -> String {
    let table: toml::Table = document.parse().unwrap_or_default();
    let mut listeners: Vec<(String, &'static str)> = Vec::new();
    for (section, protocol) in [("routes", "http"), ("tcp_routes", "tcp")] {
        let entries = table.get(section).and_then(|v| v.as_array());
        for entry in entries.into_iter().flatten() {
            let by_sni = entry.get("match").and_then(|m| m.get("sni")).is_some();
            let protocol = match (protocol, by_sni) {
                ("tcp", true) => "tls_passthrough",
                (protocol, _) => protocol,
            };
            let names = entry.get("listeners").and_then(|v| v.as_array());
            for name in names.into_iter().flatten().filter_map(|n| n.as_str()) {
                if !listeners.iter().any(|(known, _)| known == name) {
                    listeners.push((name.to_owned(), protocol));
                }
            }
        }
    }
    if listeners.is_empty() {
        listeners.push(("public".to_owned(), "http"));
    }
    let mut text = String::from(
        "version = 1\n[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/meshgate/check\"\nnode = \"check\"\nfiles_dir = \"/\"\n",
    );
    for (i, (name, protocol)) in listeners.iter().enumerate() {
        let _ = write!(
            text,
            "[[listeners]]\nname = {}\nlisten = \"127.0.0.1:{}\"\nprotocol = \"{protocol}\"\n",
            toml::Value::String(name.clone()),
            20000 + i
        );
    }
    text
}
