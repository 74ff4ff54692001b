//! The signals that stop a program, and SIGHUP, as flags its loops poll.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A flag set by SIGINT or SIGTERM (the handler only stores to it).
pub fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// A flag set by SIGHUP, so that a hang-up never ends the program (the default action would): the
/// program reloads what it can when it sees the flag, and says so.
pub fn hangup_flag() -> std::io::Result<Arc<AtomicBool>> {
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))?;
    Ok(hangup)
}
