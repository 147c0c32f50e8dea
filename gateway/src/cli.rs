//! The command line: `meshgate run`, `meshgate check`, `meshgate fleet …`, `meshgate version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::reload::base_dir_of;
use crate::server::{run, RunOptions};

/// meshgate: a mesh gateway on Pingora.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway on a policy file.
    Run {
        /// The policy file.
        #[arg(
            short = 'c',
            long = "config",
            default_value = "/etc/meshgate/meshgate.toml"
        )]
        config: PathBuf,
        /// Detach into the background (Pingora's daemon mode).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listening sockets of a running instance (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Socket used to hand listening sockets over during an upgrade.
        #[arg(long, default_value = "/tmp/meshgate_upgrade.sock")]
        upgrade_sock: String,
        /// PID file written in daemon mode.
        #[arg(long, default_value = "/tmp/meshgate.pid")]
        pid_file: String,
    },
    /// Validate a policy file like `nginx -t`: exit 0, or 1 with every error.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// The fleet's shared policy in etcd: push, status, history, rollback.
    Fleet {
        #[command(subcommand)]
        command: crate::fleet::cli::FleetCommand,
    },
    /// Print the version.
    Version,
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
        Command::Check { file } => check(&file),
        Command::Fleet { command } => crate::fleet::cli::main(command),
        Command::Version => {
            println!(
                "meshgate {} (TLS: {})",
                env!("CARGO_PKG_VERSION"),
                crate::tls::BACKEND
            );
            ExitCode::SUCCESS
        }
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let name = file.display().to_string();
    let source = match meshgate_policy::files::read_policy_file(file) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    match meshgate_policy::load(&source, &base_dir_of(file)) {
        Ok(_) => {
            println!("{name}: ok");
            ExitCode::SUCCESS
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
