//! What the programs share with the host they run on, in one place: the kernel's UDP features
//! ([`udp`]), logging set-up ([`logging`]), address resolution ([`resolve()`]) and the stop signals
//! ([`signals`]), and the host checks of `--check` ([`preflight`]). The protocol core (`checkvalve-common`) does none of this: it takes bytes and
//! time as values.

pub mod logging;
pub mod preflight;
pub mod signals;
pub mod udp;

mod resolve;

pub use resolve::{ResolveError, resolve};
