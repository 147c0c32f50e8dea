//! `meshgate fleet push | status | history | rollback`: the fleet's commands, against etcd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use meshgate_policy::fleet::FleetSettings;

use super::push::{self, PushError};
use super::Keys;

/// Where the fleet is: etcd and the prefix, or a node's policy file whose `[fleet]` says it
/// (with its TLS and user).
#[derive(Debug, Args)]
pub struct FleetTarget {
    /// etcd endpoint (repeatable), such as http://10.0.0.2:2379.
    #[arg(long)]
    etcd: Vec<String>,
    /// The fleet's key prefix, such as /meshgate/prod.
    #[arg(long)]
    prefix: Option<String>,
    /// A node's policy file: its [fleet] gives etcd, the prefix, TLS and credentials.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

/// The fleet's commands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Validate a fleet document, have every live node validate it, and commit it when all
    /// said ok (exit 1, with each node's errors, when not).
    Push {
        /// The fleet document (upstreams, routes, rate_limit_store, discovery, telemetry).
        file: PathBuf,
        #[command(flatten)]
        target: FleetTarget,
        /// How long to wait for every node's answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Every live node: the version and hash it serves, its last error, whether it lags.
    Status {
        #[command(flatten)]
        target: FleetTarget,
    },
    /// The committed documents kept, oldest first.
    History {
        #[command(flatten)]
        target: FleetTarget,
    },
    /// Push an earlier committed document again (the one before the committed one, or
    /// `--to N`), through the same two-phase path.
    Rollback {
        #[command(flatten)]
        target: FleetTarget,
        /// The version to go back to.
        #[arg(long)]
        to: Option<u64>,
        /// How long to wait for every node's answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

impl FleetTarget {
    fn settings(&self) -> Result<FleetSettings, String> {
        if let Some(config) = &self.config {
            let source = meshgate_policy::files::read_policy_file(config)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let policy = meshgate_policy::load(&source, &crate::files::base_dir_of(config))
                .map_err(|errors| {
                    errors
                        .iter()
                        .map(|e| e.display_with_file(&config.display().to_string()))
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            return policy
                .fleet
                .ok_or_else(|| format!("{}: no [fleet] section", config.display()));
        }
        let prefix = self
            .prefix
            .clone()
            .ok_or("give --etcd and --prefix, or -c with a node's policy file")?;
        if self.etcd.is_empty() {
            return Err("give --etcd and --prefix, or -c with a node's policy file".into());
        }
        Ok(FleetSettings {
            etcd: self.etcd.clone(),
            prefix: prefix.trim_end_matches('/').to_owned(),
            node: String::new(),
            history: meshgate_policy::fleet::DEFAULT_HISTORY,
            ca: None,
            identity: None,
            credentials: None,
            files_dir: None,
        })
    }
}

/// Runs a fleet command.
pub fn main(command: FleetCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: FleetCommand) -> Result<(), String> {
    let target = match &command {
        FleetCommand::Push { target, .. }
        | FleetCommand::Status { target }
        | FleetCommand::History { target }
        | FleetCommand::Rollback { target, .. } => target,
    };
    let settings = target.settings()?;
    let keys = Keys::new(&settings.prefix);
    let mut client = super::connect(&settings).await?;
    let text = |e: PushError| e.to_string();
    match command {
        FleetCommand::Push { file, timeout, .. } => {
            let document = meshgate_policy::files::read_policy_file(&file)?;
            let version = push::push(&mut client, &keys, &document, settings.history, timeout)
                .await
                .map_err(text)?;
            println!("committed version {version}");
        }
        FleetCommand::Status { .. } => {
            let report = push::status(&mut client, &keys).await.map_err(text)?;
            println!(
                "committed version {} ({})",
                report.committed,
                short(&report.hash)
            );
            println!(
                "{:<20} {:<6} {:>8} {:<12} {:<7} last error",
                "node", "state", "version", "hash", "lags"
            );
            for node in &report.nodes {
                println!(
                    "{:<20} {:<6} {:>8} {:<12} {:<7} {}",
                    node.node,
                    if node.alive { "alive" } else { "down" },
                    node.version,
                    short(&node.hash),
                    if node.lagging { "yes" } else { "no" },
                    node.last_error.as_deref().unwrap_or("-")
                );
            }
            if report.nodes.is_empty() {
                println!("(no live node)");
            }
        }
        FleetCommand::History { .. } => {
            for document in push::history(&mut client, &keys).await.map_err(text)? {
                println!("{:>8} {}", document.version, short(&document.hash));
            }
        }
        FleetCommand::Rollback { to, timeout, .. } => {
            let kept = push::history(&mut client, &keys).await.map_err(text)?;
            let committed = kept.last().map_or(0, |d| d.version);
            let wanted = to.unwrap_or(committed.saturating_sub(1));
            let document = kept.iter().find(|d| d.version == wanted).ok_or_else(|| {
                format!(
                    "no kept document of version {wanted}; kept: {}",
                    kept.iter()
                        .map(|d| d.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let version = push::push(
                &mut client,
                &keys,
                &document.text,
                settings.history,
                timeout,
            )
            .await
            .map_err(text)?;
            println!("rolled back to version {wanted}, committed as version {version}");
        }
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
