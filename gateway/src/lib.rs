//! meshgate: a mesh gateway on Pingora.
//!
//! The crate wires the policy (`meshgate-policy`) and the admin API (`meshgate-admin`) to
//! Pingora's proxy: [`proxy`] holds the request phases, [`upstream`] the pools and load
//! balancing, [`limit`] the rate limits, [`reload`] the atomic policy swap, [`telemetry`] metrics and the access log.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod discovery;
pub mod files;
pub mod fleet;
pub mod history;
pub mod lifecycle;
pub mod limit;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
