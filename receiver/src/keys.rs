//! Keys and authentication state of the receiver: key files (readable by the service user only)
//! and the replay state kept in the state folder across restarts.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use checkvalve_common::auth::{self, KeyReplayState, Persisted, Psk, SessionFloor};
use serde::{Deserialize, Serialize};

/// File name of the authentication state inside the state folder.
pub const STATE_FILE: &str = "auth.json";

/// Reads a key file, refusing one that others than its owner can read.
pub fn load(path: &Path) -> Result<Psk> {
    let text = checkvalve_confine::read_private(path)
        .with_context(|| format!("key file {}", path.display()))?;
    auth::parse_key_file(&text).with_context(|| format!("key file {}", path.display()))
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: u32,
    newest_epoch: u32,
    sessions: Vec<SessionEntry>,
}

/// One session's floors as saved.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SessionEntry {
    /// Session id (hex) and the highest counter accepted in each counter space.
    Floors {
        session: String,
        objects: Option<u64>,
        heartbeats: Option<u64>,
    },
    /// Session id (hex) and highest counter accepted, as saved before heartbeats counted apart
    /// (all of such a session's counters are below the heartbeats' space).
    Single(String, u64),
}

/// The replay state saved by the last run (empty if there is none). A file that cannot be read or
/// parsed is an error, never an empty state: starting from nothing would accept a replay of any
/// earlier session.
pub fn load_state(file: &Path) -> Result<Persisted> {
    let bytes = match fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Persisted::default()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the replay state {}", file.display()));
        }
    };
    let entries: Vec<KeyEntry> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the replay state {} is corrupt: starting without it would accept replays of earlier sessions; restore it, or move it aside to start anew knowingly",
            file.display()
        )
    })?;
    Ok(Persisted {
        keys: entries
            .into_iter()
            .map(|e| KeyReplayState {
                key_id: e.id,
                newest_epoch: e.newest_epoch,
                sessions: e
                    .sessions
                    .iter()
                    .filter_map(|entry| {
                        let (session, objects, heartbeats) = match entry {
                            SessionEntry::Floors {
                                session,
                                objects,
                                heartbeats,
                            } => (session, *objects, *heartbeats),
                            SessionEntry::Single(session, counter) => {
                                (session, Some(*counter), None)
                            }
                        };
                        Some(SessionFloor {
                            session: u64::from_str_radix(session, 16).ok()?,
                            objects,
                            heartbeats,
                        })
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Saves the replay state atomically.
pub fn save_state(file: &Path, p: &Persisted) -> std::io::Result<()> {
    let entries: Vec<KeyEntry> = p
        .keys
        .iter()
        .map(|k| KeyEntry {
            id: k.key_id,
            newest_epoch: k.newest_epoch,
            sessions: k
                .sessions
                .iter()
                .map(|f| SessionEntry::Floors {
                    session: format!("{:016x}", f.session),
                    objects: f.objects,
                    heartbeats: f.heartbeats,
                })
                .collect(),
        })
        .collect();
    let tmp = file.with_extension("json.new");
    fs::write(
        &tmp,
        serde_json::to_vec(&entries).map_err(std::io::Error::other)?,
    )?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(STATE_FILE);
        assert_eq!(load_state(&f).unwrap(), Persisted::default());
        let p = Persisted {
            keys: vec![KeyReplayState {
                key_id: 1,
                newest_epoch: 100,
                sessions: vec![SessionFloor {
                    session: 0xabc,
                    objects: Some(7),
                    heartbeats: Some(auth::HEARTBEAT_COUNTERS + 2),
                }],
            }],
        };
        save_state(&f, &p).unwrap();
        assert_eq!(load_state(&f).unwrap(), p);
        // A state saved before heartbeats counted apart.
        std::fs::write(
            &f,
            br#"[{"id":1,"newest_epoch":100,"sessions":[["0000000000000abc",7]]}]"#,
        )
        .unwrap();
        let old = &load_state(&f).unwrap().keys[0].sessions[0];
        assert_eq!((old.objects, old.heartbeats), (Some(7), None));
        std::fs::write(&f, b"{\"truncat").unwrap();
        let e = load_state(&f).expect_err("a corrupt state must not read as empty");
        assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    }
}
