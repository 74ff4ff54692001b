//! What the programs share with the host they run on, in one place: the kernel's UDP features
//! ([`udp`]), logging set-up ([`logging`]), address resolution ([`resolve()`]), the stop signals
//! ([`signals`]), the host checks of `--check` ([`preflight`]), the manual pages and completions
//! generated from the programs' definitions ([`manual`]), what their command lines share
//! ([`cli`]), and the build's version and commit.
//! The protocol core (`checkvalve-common`) does none of this: it takes bytes and time as values.

/// The commit the programs were built from (short hash, or "unknown").
pub const COMMIT: &str = env!("CHECKVALVE_COMMIT");

/// What `--version` says: the version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHECKVALVE_COMMIT"),
    ")"
);

pub mod cli;
pub mod logging;
pub mod manual;
pub mod preflight;
pub mod signals;
pub mod udp;

mod resolve;

pub use resolve::{ResolveError, resolve};
