//! meshgate's policy: the TOML schema, parsing with positions, whole-file validation, and the
//! compiled snapshot the data plane queries.
//!
//! This crate knows nothing of sockets or Pingora: it turns text into a [`CompiledPolicy`] or a
//! list of [`PolicyError`]s, each with its line, column and key path.

pub mod compiled;
pub mod compress;
pub mod cors;
pub mod diff;
pub mod direct;
pub mod discovery;
mod display;
pub mod duration;
pub mod effective;
mod error;
pub mod files;
pub mod fleet;
pub mod jwt;
mod load;
pub mod matching;
pub mod mirror;
pub mod path;
pub mod pem;
pub mod rewrite;
pub mod schema;
pub mod size;
pub mod tcp;

pub use compiled::{CompiledPolicy, RequestView};
pub use error::PolicyError;
pub use load::{
    check_admin_token, check_fleet_document, load, load_with_fleet, load_with_warnings,
    warnings_of, FleetError,
};
