//! The command line: `meshgate run`, `meshgate check`, `meshgate fleet …`, `meshgate version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::files::base_dir_of;
use crate::server::{run, RunOptions};

/// The default policy file of `run` and `check`.
const DEFAULT_POLICY: &str = "/etc/meshgate/meshgate.toml";

/// Examples shown under `meshgate --help`, one per subcommand.
const EXAMPLES: &str = "Examples:
  meshgate run -c /etc/meshgate/meshgate.toml       serve the policy in the foreground
  meshgate run --upgrade -d -c meshgate.toml        take over from a running instance
  meshgate check -c meshgate.toml                   validate a policy like `nginx -t`
  meshgate check --print meshgate.toml              the policy with every default, like `nginx -T`
  meshgate check --fleet fleet.toml [--local node.toml]   a fleet document, alone or with a node's file
  meshgate diff old.toml new.toml                   what applying new.toml would change
  meshgate fleet push -c meshgate.toml fleet.toml   push a shared policy to every node
  meshgate version                                  print the version and TLS backend";

/// `<version> (TLS: <backend>)`, as both `--version` and `version` print it.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (TLS: {})",
            env!("CARGO_PKG_VERSION"),
            crate::tls::BACKEND
        )
    })
}

/// meshgate: a mesh gateway on Pingora.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version = version_text(), about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway on a policy file: meshgate run -c /etc/meshgate/meshgate.toml
    Run {
        /// The policy file.
        #[arg(short = 'c', long = "config", default_value = DEFAULT_POLICY)]
        config: PathBuf,
        /// Detach into the background (Pingora's daemon mode).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listening sockets of a running instance (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Socket used to hand listening sockets over during an upgrade (its folder is
        /// created when missing).
        #[arg(long, default_value = "/run/meshgate/upgrade.sock")]
        upgrade_sock: String,
        /// The PID file (its folder is created when missing).
        #[arg(long, default_value = "/run/meshgate/meshgate.pid")]
        pid_file: String,
    },
    /// Validate a policy file like `nginx -t`: meshgate check -c meshgate.toml
    Check {
        /// The policy file (the same default as `run`).
        #[arg(short = 'c', long = "config", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// The policy file, as a plain argument.
        file: Option<PathBuf>,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
        /// Print the effective policy, every default filled in, on standard output (the
        /// verdict goes to standard error), like `nginx -T`.
        #[arg(long)]
        print: bool,
        /// The form `--print` writes.
        #[arg(long, value_enum, default_value_t = PrintFormat::Toml, requires = "print")]
        format: PrintFormat,
        /// Check a fleet document (as `meshgate fleet push` takes it) instead of a policy:
        /// alone, or with `--local` merged with a node's file.
        #[arg(long, conflicts_with_all = ["config", "file", "print"])]
        fleet: Option<PathBuf>,
        /// With `--fleet`: the node's local policy file to merge the document with.
        #[arg(long, requires = "fleet")]
        local: Option<PathBuf>,
    },
    /// What applying NEW over OLD would change: meshgate diff old.toml new.toml
    Diff {
        /// The policy in use.
        old: PathBuf,
        /// The policy to compare with it.
        new: PathBuf,
    },
    /// The fleet's shared policy in etcd: meshgate fleet push -c meshgate.toml fleet.toml
    Fleet {
        #[command(subcommand)]
        command: crate::fleet::cli::FleetCommand,
    },
    /// Print the version and TLS backend: meshgate version
    Version,
}

/// What `check --print` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PrintFormat {
    /// A policy file.
    Toml,
    /// The same content as JSON, as `GET /config?format=json` gives it.
    Json,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            daemon,
            upgrade,
            upgrade_sock,
            pid_file,
        } => {
            crate::telemetry::init_logging();
            let options = RunOptions {
                policy: config,
                daemon,
                upgrade,
                upgrade_sock,
                pid_file,
            };
            match run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check {
            fleet: Some(document),
            local,
            ..
        } => crate::fleet::check::check(&document, local.as_deref()),
        Command::Check {
            config,
            file,
            strict,
            print,
            format,
            ..
        } => check(
            &config
                .or(file)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY)),
            strict,
            print.then_some(format),
        ),
        Command::Diff { old, new } => diff(&old, &new),
        Command::Fleet { command } => crate::fleet::cli::main(command),
        Command::Version => {
            println!("meshgate {}", version_text());
            ExitCode::SUCCESS
        }
    }
}

/// Validates `file`: its errors (exit 1), else its warnings after them (exit 0, or 1 when
/// `strict`); with `print`, a valid policy's effective form on standard output.
fn check(file: &std::path::Path, strict: bool, print: Option<PrintFormat>) -> ExitCode {
    let name = file.display().to_string();
    let source = match meshgate_policy::files::read_policy_file(file) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With `--print`, standard output holds only the policy, so that it can be redirected.
    let verdict = |line: String| match print {
        Some(_) => eprintln!("{line}"),
        None => println!("{line}"),
    };
    let print_policy = |policy: &meshgate_policy::CompiledPolicy| {
        let effective = meshgate_policy::effective::effective(policy);
        match print {
            Some(PrintFormat::Toml) => {
                print!("{}", meshgate_policy::effective::to_toml(&effective))
            }
            Some(PrintFormat::Json) => println!(
                "{}",
                serde_json::to_string_pretty(&effective).unwrap_or_default()
            ),
            None => {}
        }
    };
    match meshgate_policy::load_with_warnings(&source, &base_dir_of(file)) {
        Ok((policy, warnings)) if warnings.is_empty() => {
            print_policy(&policy);
            verdict(format!("{name}: ok"));
            ExitCode::SUCCESS
        }
        Ok((policy, warnings)) => {
            for warning in &warnings {
                let text = warning.display_with_file(&name);
                // `FILE:L:C: path: message` → `FILE:L:C: warning: path: message`
                let shown = match text.split_once(": ") {
                    Some((place, rest)) => format!("{place}: warning: {rest}"),
                    None => text,
                };
                eprintln!("{shown}");
            }
            if strict {
                eprintln!("{name}: {} warning(s), refused by --strict", warnings.len());
                ExitCode::FAILURE
            } else {
                print_policy(&policy);
                verdict(format!("{name}: ok, {} warning(s)", warnings.len()));
                ExitCode::SUCCESS
            }
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{}", error.display_with_file(&name));
            }
            eprintln!("{name}: {} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Prints what applying `new` over `old` would change, one line each; exit 1 when either is
/// invalid (with its errors).
fn diff(old: &std::path::Path, new: &std::path::Path) -> ExitCode {
    let load = |file: &std::path::Path| {
        let name = file.display().to_string();
        let source = meshgate_policy::files::read_policy_file(file)
            .map_err(|e| vec![format!("{name}: cannot read: {e}")])?;
        meshgate_policy::load(&source, &base_dir_of(file)).map_err(|errors| {
            errors
                .iter()
                .map(|e| e.display_with_file(&name))
                .collect::<Vec<_>>()
        })
    };
    match (load(old), load(new)) {
        (Ok(old), Ok(new)) => {
            let changes = meshgate_policy::diff::diff(&old, &new);
            if changes.is_empty() {
                println!("no change");
                return ExitCode::SUCCESS;
            }
            for line in changes.lines() {
                println!("{line}");
            }
            // As diff(1): 1 when they differ, 2 when one cannot be read.
            ExitCode::from(1)
        }
        (old, new) => {
            for line in [old.err(), new.err()].into_iter().flatten().flatten() {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}
