//! The sender's identity on the link: its session id (an epoch that never goes back, and random
//! bits), and the pre-shared key that authenticates its datagrams; `keygen` makes keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use checkvalve_common::auth::{self, KEY_LEN, Psk, Sealer};
use tracing::warn;

/// File in the state folder holding the last epoch used.
const EPOCH_FILE: &str = "epoch";

/// The session and, with a key, the sealer of its datagrams.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Session id: epoch (32 bits) and random bits (32).
    pub session: u64,
    /// Seals every datagram when a key is configured.
    pub sealer: Option<Sealer>,
}

/// A new session: its epoch is the time in seconds, or one more than the last epoch recorded in
/// `state` if the clock went back, so that a receiver holding a key never takes a new session for
/// a replay of an old one.
pub fn identity(state: Option<&Path>, key: Option<&Psk>, encrypt: bool) -> Identity {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let mut epoch = now;
    if let Some(state) = state {
        let file = state.join(EPOCH_FILE);
        let last = fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(last) = last
            && last >= now
        {
            warn!(
                last,
                now, "the clock is behind the last session's epoch: continuing from it"
            );
            epoch = last.saturating_add(1);
        }
        let tmp = state.join(format!("{EPOCH_FILE}.new"));
        let written = fs::write(&tmp, format!("{epoch}\n")).and_then(|()| fs::rename(&tmp, &file));
        if let Err(e) = written {
            warn!(state = %state.display(), "cannot record the session epoch: {e}");
        }
    }
    let session = auth::session_id(epoch, rand::random::<u32>() | 1);
    Identity {
        session,
        sealer: key.map(|k| Sealer::new(k, session, encrypt)),
    }
}

/// Why a sender without a key does not start.
pub const NO_KEY: &str = "no key: give a key file (--key FILE or key = \"/path\", made by `checkvalve-send keygen`), or accept unauthenticated datagrams with --allow-unauthenticated (allow_unauthenticated = true)";

/// Logged at the start of a sender that runs without a key.
pub const UNAUTHENTICATED: &str = "--allow-unauthenticated: datagrams are NOT authenticated; anyone on the DMZ side can forge what the receiver accepts";

/// Reads a key file, refusing one that others than its owner can read.
pub fn load(path: &Path) -> Result<Psk> {
    let text = checkvalve_confine::read_private(path)
        .with_context(|| format!("key file {}", path.display()))?;
    auth::parse_key_file(&text).with_context(|| format!("key file {}", path.display()))
}

/// Writes a new random key with id `id` to `out` (mode 0600, never over an existing file).
pub fn keygen(id: u32, out: &Path) -> Result<()> {
    let mut key = [0u8; KEY_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(auth::key_file_text(&Psk { id, key }).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_and_epochs_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        keygen(3, &key).unwrap();
        assert!(keygen(3, &key).is_err(), "never over an existing key");
        let psk = load(&key).unwrap();
        assert_eq!(psk.id, 3);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&key).is_err(), "a key others can read is refused");
        fs::write(dir.path().join(EPOCH_FILE), format!("{}\n", u32::MAX - 5)).unwrap();
        let a = identity(Some(dir.path()), None, false);
        let b = identity(Some(dir.path()), None, false);
        assert_eq!(auth::epoch_of(a.session), u32::MAX - 4);
        assert_eq!(auth::epoch_of(b.session), u32::MAX - 3);
    }
}
