//! Authenticated (and optionally encrypted) datagrams: AES-256-GCM under a per-session key derived
//! from a pre-shared key, a trailer with the key id and a per-session counter, and the receiver's
//! replay rules (a sliding window per session, and no session older than the newest one seen).
//!
//! Layout of an authenticated datagram (`docs/protocol.md` §8): the v1 datagram with flag `AUTH`
//! (and `ENCRYPT`) set, then `key_id (4) | counter (8) | tag (16)` between the payload and the CRC.
//! Nothing here does I/O: keys come in as bytes, state goes out as values for the caller to persist.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hkdf;
use thiserror::Error;

use crate::wire::{
    ANNOUNCE_HEADER_LEN, COMMON_HEADER_LEN, CRC_LEN, MAGIC, SHARD_HEADER_LEN, TAILS_HEADER_LEN,
    kind,
};

/// Flag: the datagram carries an authentication trailer.
pub const FLAG_AUTH: u16 = 0x0001;
/// Flag: the payload is encrypted (only with `FLAG_AUTH`).
pub const FLAG_ENCRYPT: u16 = 0x0002;
/// Bytes of a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Bytes of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the trailer: key id, counter, tag.
pub const TRAILER_LEN: usize = 4 + 8 + TAG_LEN;
/// HKDF salt of the per-session key.
pub const KDF_SALT: &[u8] = b"checkvalve v1 session key";
/// Counters a session's window remembers behind the highest seen (reordering it tolerates).
pub const WINDOW: u64 = 1 << 16;
/// Sessions per key tracked at once by a receiver.
pub const SESSIONS_PER_KEY: usize = 16;
/// The first heartbeat counter. A session counts its objects' datagrams from 0 and its heartbeats
/// and announcements from here, each in the order it sends them: objects' datagrams are sealed as they are encoded,
/// ahead of the link, heartbeats as they go out, so one counter for both would put heartbeats
/// ahead of datagrams still queued, and a receiver restarted between the two would refuse those.
pub const HEARTBEAT_COUNTERS: u64 = 1 << 63;

/// Why a datagram was refused by authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No authentication trailer, and authentication is required.
    #[error("not authenticated")]
    Unauthenticated,
    /// Too short to hold a trailer, or flags that make no sense together.
    #[error("malformed authenticated datagram")]
    Malformed,
    /// The key id is not one of ours.
    #[error("unknown key id")]
    UnknownKey,
    /// The tag does not verify: forged, corrupted, or the wrong key.
    #[error("authentication tag does not verify")]
    BadTag,
    /// The counter was seen already, or is too far behind.
    #[error("replayed datagram")]
    Replayed,
    /// A session older than the newest one seen under this key.
    #[error("datagram of an old session")]
    OldSession,
}

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyFileError {
    /// A line is neither a comment, `id = N` nor `key = "HEX"`.
    #[error("line {0}: expected id = N or key = \"64 hex digits\"")]
    Syntax(usize),
    /// The id is missing or not a number below 2^32.
    #[error("no valid id")]
    Id,
    /// The key is missing or not 64 hex digits.
    #[error("no valid key (64 hex digits)")]
    Key,
}

/// Parses a key file: `id = N` and `key = "64 hex digits"`, `#` comments (what `keygen` writes).
pub fn parse_key_file(text: &str) -> Result<Psk, KeyFileError> {
    let (mut id, mut key) = (None, None);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or(KeyFileError::Syntax(i + 1))?;
        let value = value.trim().trim_matches('"');
        match name.trim() {
            "id" => id = Some(value.parse::<u32>().map_err(|_| KeyFileError::Id)?),
            "key" => {
                if value.len() != 2 * KEY_LEN || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(KeyFileError::Key);
                }
                let mut k = [0u8; KEY_LEN];
                for (j, byte) in k.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&value[2 * j..2 * j + 2], 16)
                        .map_err(|_| KeyFileError::Key)?;
                }
                key = Some(k);
            }
            _ => return Err(KeyFileError::Syntax(i + 1)),
        }
    }
    Ok(Psk {
        id: id.ok_or(KeyFileError::Id)?,
        key: key.ok_or(KeyFileError::Key)?,
    })
}

/// The text of a key file for `psk`.
pub fn key_file_text(psk: &Psk) -> String {
    let hex: String = psk.key.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# checkvalve pre-shared key: readable by the checkvalve service user only, on both hosts.\nid = {}\nkey = \"{hex}\"\n",
        psk.id
    )
}

/// A pre-shared key and its id.
#[derive(Clone)]
pub struct Psk {
    /// Key id, carried in every datagram (two ids are valid during a rotation).
    pub id: u32,
    /// The key.
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk {{ id: {}, key: <secret> }}", self.id)
    }
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// The AES-256-GCM key of one session: HKDF-SHA256 of the pre-shared key, salted with
/// [`KDF_SALT`], with the session id (8 bytes, big-endian) as info. A restarted sender picks a
/// new session id, so no (key, nonce) pair is ever used twice.
pub fn session_key(psk: &Psk, session: u64) -> LessSafeKey {
    let key = session_key_bytes(psk, session);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte AES-256 key"))
}

/// The bytes of [`session_key`] (for test vectors and other implementations).
pub fn session_key_bytes(psk: &Psk, session: u64) -> [u8; KEY_LEN] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KDF_SALT).extract(&psk.key);
    let info = session.to_be_bytes();
    let info = [&info[..]];
    let okm = prk
        .expand(&info, KeyLen)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut key = [0u8; KEY_LEN];
    okm.fill(&mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Equality of two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the payload starts: after the shard header, or nowhere (heartbeats are all header).
fn payload_start(body: &[u8]) -> usize {
    match body.get(5) {
        Some(&kind::SHARD) => SHARD_HEADER_LEN.min(body.len()),
        // An announcement's entries are what encryption hides: names, sizes, digests.
        Some(&kind::ANNOUNCE) => ANNOUNCE_HEADER_LEN.min(body.len()),
        // Likewise the tails' channel names and positions.
        Some(&kind::TAILS) => TAILS_HEADER_LEN.min(body.len()),
        _ => body.len(),
    }
}

/// The session id of a sender started at `epoch` (seconds, or a persisted counter that never goes
/// back) with 32 random bits.
pub fn session_id(epoch: u32, random: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(random)
}

/// The epoch in a session id.
pub fn epoch_of(session: u64) -> u32 {
    (session >> 32) as u32
}

thread_local! {
    /// Where the payload of an authenticated-only datagram is encrypted to compute its tag.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Seals datagrams of one session. Clones share the counters (producer and transmitter threads).
#[derive(Clone)]
pub struct Sealer {
    key_id: u32,
    key: Arc<LessSafeKey>,
    /// The next object datagram's counter (from 0).
    counter: Arc<AtomicU64>,
    /// The next heartbeat's counter (from [`HEARTBEAT_COUNTERS`]).
    heartbeat_counter: Arc<AtomicU64>,
    encrypt: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealer {{ key_id: {}, encrypt: {} }}",
            self.key_id, self.encrypt
        )
    }
}

impl Sealer {
    /// A sealer for `session` under `psk`; `encrypt` also hides payloads.
    pub fn new(psk: &Psk, session: u64, encrypt: bool) -> Sealer {
        Sealer {
            key_id: psk.id,
            key: Arc::new(session_key(psk, session)),
            counter: Arc::new(AtomicU64::new(0)),
            heartbeat_counter: Arc::new(AtomicU64::new(HEARTBEAT_COUNTERS)),
            encrypt,
        }
    }

    /// The same sealer with its next object datagram's counter at `counter` (test vectors).
    pub fn starting_at(self, counter: u64) -> Sealer {
        self.counter.store(counter, Ordering::Relaxed);
        self
    }

    /// Turns the v1 datagram of an object at `out[start..]` (ending with its CRC) into an
    /// authenticated one in place: flags set, payload encrypted if asked, trailer and a new CRC
    /// appended. Call it in the order the datagrams will be sent.
    pub fn seal(&self, out: &mut Vec<u8>, start: usize) {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        self.seal_as(counter, out, start);
    }

    /// Like [`Sealer::seal`], for a heartbeat or an announcement as it is sent (these count
    /// apart, from [`HEARTBEAT_COUNTERS`]).
    pub fn seal_heartbeat(&self, out: &mut Vec<u8>, start: usize) {
        let counter = self.heartbeat_counter.fetch_add(1, Ordering::Relaxed);
        self.seal_as(counter, out, start);
    }

    fn seal_as(&self, counter: u64, out: &mut Vec<u8>, start: usize) {
        out.truncate(out.len() - CRC_LEN);
        let flags = FLAG_AUTH | if self.encrypt { FLAG_ENCRYPT } else { 0 };
        out[start + 6..start + 8].copy_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        let body_end = out.len() - 12;
        let body = &mut out[start..];
        let split = payload_start(&body[..body_end - start]);
        let (clear, rest) = body.split_at_mut(split);
        let (payload, ids) = rest.split_at_mut(body_end - start - split);
        let mut aad = [0u8; SHARD_HEADER_LEN + COMMON_HEADER_LEN + 12];
        let n = clear.len() + ids.len();
        aad[..clear.len()].copy_from_slice(clear);
        aad[clear.len()..n].copy_from_slice(ids);
        let tag = if self.encrypt {
            self.key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(&aad[..n]), payload)
        } else {
            // The same tag, computed on a copy: the payload itself goes out in the clear.
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                scratch.extend_from_slice(payload);
                self.key
                    .seal_in_place_separate_tag(nonce(counter), Aad::from(&aad[..n]), scratch)
            })
        }
        .expect("GCM seals any datagram-sized input");
        out.extend_from_slice(tag.as_ref());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
}

/// The replay window of one session: the highest counter seen and which of the `WINDOW` before it.
#[derive(Debug, Clone)]
struct Window {
    top: Option<u64>,
    /// Counters up to and including this were accepted before a restart: all refused.
    floor: Option<u64>,
    bits: Vec<u64>,
}

impl Window {
    fn new(floor: Option<u64>) -> Window {
        Window {
            top: None,
            floor,
            bits: vec![0; (WINDOW / 64) as usize],
        }
    }

    fn bit(&mut self, c: u64) -> (&mut u64, u64) {
        let i = (c % WINDOW) as usize;
        (&mut self.bits[i / 64], 1u64 << (i % 64))
    }

    /// True (and remembered) if `c` was not seen and is not too old.
    fn accept(&mut self, c: u64) -> bool {
        if self.floor.is_some_and(|f| c <= f) {
            return false;
        }
        match self.top {
            Some(top) if c <= top => {
                if top - c >= WINDOW {
                    return false;
                }
                let (word, bit) = self.bit(c);
                if *word & bit != 0 {
                    return false;
                }
                *word |= bit;
                true
            }
            top => {
                // Clear the slots the window slides over.
                let from = top.map_or(0, |t| t + 1);
                if c - from >= WINDOW {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for x in from..c {
                        let (word, bit) = self.bit(x);
                        *word &= !bit;
                    }
                }
                let (word, bit) = self.bit(c);
                *word |= bit;
                self.top = Some(c);
                true
            }
        }
    }
}

/// One key's replay state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyReplayState {
    /// The key's id.
    pub key_id: u32,
    /// The newest session's epoch: older sessions are refused.
    pub newest_epoch: u32,
    /// The highest counter accepted per session, by session.
    pub sessions: Vec<SessionFloor>,
}

/// The highest counters accepted of one session, one per counter space: nothing at or below them
/// is accepted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionFloor {
    /// The session.
    pub session: u64,
    /// Its highest object datagram's counter accepted, if any.
    pub objects: Option<u64>,
    /// Its highest heartbeat counter accepted, if any.
    pub heartbeats: Option<u64>,
}

/// What a receiver must keep across restarts, per key id: the newest session's epoch and the
/// highest counter accepted per session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    /// One entry per key that has seen a session.
    pub keys: Vec<KeyReplayState>,
}

/// One session's key and its two replay windows, one per counter space.
struct SessionState {
    key: Arc<LessSafeKey>,
    /// Counters below [`HEARTBEAT_COUNTERS`]: objects' datagrams.
    objects: Window,
    /// Counters from [`HEARTBEAT_COUNTERS`] up: heartbeats.
    heartbeats: Window,
}

impl SessionState {
    fn window(&mut self, counter: u64) -> &mut Window {
        if counter >= HEARTBEAT_COUNTERS {
            &mut self.heartbeats
        } else {
            &mut self.objects
        }
    }
}

struct KeyState {
    psk: Psk,
    newest_epoch: Option<u32>,
    sessions: HashMap<u64, SessionState>,
}

/// The receiver's side: verifies, decrypts and checks replays, keeping state only for what
/// verified.
pub struct Opener {
    keys: HashMap<u32, KeyState>,
    /// Where authenticated-only payloads are encrypted to check their tag.
    scratch: Vec<u8>,
    require: bool,
    changed: bool,
}

/// Counters of what authentication refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Unauthenticated datagrams while authentication is required.
    pub unauthenticated: u64,
    /// Malformed trailers.
    pub malformed: u64,
    /// Unknown key ids.
    pub unknown_key: u64,
    /// Tags that did not verify.
    pub bad_tag: u64,
    /// Replays within a session.
    pub replayed: u64,
    /// Datagrams of sessions older than the newest.
    pub old_session: u64,
}

impl std::fmt::Display for Refused {
    /// `unauthenticated=N bad_tag=N ...`, as a log line's fields read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refused {
            unauthenticated,
            malformed,
            unknown_key,
            bad_tag,
            replayed,
            old_session,
        } = self;
        write!(
            f,
            "unauthenticated={unauthenticated} bad_tag={bad_tag} unknown_key={unknown_key} replayed={replayed} old_session={old_session} malformed={malformed}"
        )
    }
}

impl Refused {
    /// Counts `e`.
    pub fn count(&mut self, e: AuthError) {
        match e {
            AuthError::Unauthenticated => self.unauthenticated += 1,
            AuthError::Malformed => self.malformed += 1,
            AuthError::UnknownKey => self.unknown_key += 1,
            AuthError::BadTag => self.bad_tag += 1,
            AuthError::Replayed => self.replayed += 1,
            AuthError::OldSession => self.old_session += 1,
        }
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.unauthenticated
            + self.malformed
            + self.unknown_key
            + self.bad_tag
            + self.replayed
            + self.old_session
    }
}

impl Opener {
    /// An opener for `keys`; with `require`, unauthenticated datagrams are refused.
    pub fn new(keys: Vec<Psk>, require: bool, persisted: &Persisted) -> Opener {
        let mut map: HashMap<u32, KeyState> = keys
            .into_iter()
            .map(|psk| {
                (
                    psk.id,
                    KeyState {
                        psk,
                        newest_epoch: None,
                        sessions: HashMap::new(),
                    },
                )
            })
            .collect();
        for p in &persisted.keys {
            if let Some(k) = map.get_mut(&p.key_id) {
                k.newest_epoch = Some(p.newest_epoch);
                for f in &p.sessions {
                    let state = SessionState {
                        key: Arc::new(session_key(&k.psk, f.session)),
                        objects: Window::new(f.objects),
                        heartbeats: Window::new(f.heartbeats),
                    };
                    k.sessions.insert(f.session, state);
                }
            }
        }
        Opener {
            keys: map,
            scratch: Vec::new(),
            require,
            changed: false,
        }
    }

    /// Checks the datagram in `buf` (its CRC already checked by the caller or not: it is checked
    /// again here for authenticated ones) and, if it is authenticated and fresh, rewrites it in
    /// place into the plain v1 datagram it carries; returns that datagram's length. An
    /// unauthenticated datagram passes unchanged unless authentication is required.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<usize, AuthError> {
        let len = buf.len();
        if len < COMMON_HEADER_LEN + TRAILER_LEN + CRC_LEN || buf[..4] != MAGIC {
            return if self.require {
                Err(AuthError::Unauthenticated)
            } else {
                Ok(len)
            };
        }
        let flags = u16::from_be_bytes([buf[6], buf[7]]);
        if flags & FLAG_AUTH == 0 {
            return if self.require {
                Err(AuthError::Unauthenticated)
            } else {
                Ok(len)
            };
        }
        if flags & !(FLAG_AUTH | FLAG_ENCRYPT) != 0 {
            return Err(AuthError::Malformed);
        }
        let body_end = len - CRC_LEN;
        if crc32fast::hash(&buf[..body_end])
            != u32::from_be_bytes(buf[body_end..].try_into().unwrap_or_default())
        {
            return Err(AuthError::Malformed);
        }
        let t = body_end - TRAILER_LEN;
        let key_id = u32::from_be_bytes(buf[t..t + 4].try_into().unwrap_or_default());
        let counter = u64::from_be_bytes(buf[t + 4..t + 12].try_into().unwrap_or_default());
        let session = u64::from_be_bytes(buf[8..16].try_into().unwrap_or_default());
        let k = self.keys.get_mut(&key_id).ok_or(AuthError::UnknownKey)?;
        // Verify with the session's key before any state is created for it.
        let known = k.sessions.get(&session).map(|s| Arc::clone(&s.key));
        let key = known
            .clone()
            .unwrap_or_else(|| Arc::new(session_key(&k.psk, session)));
        let encrypted = flags & FLAG_ENCRYPT != 0;
        let split = payload_start(&buf[..t]);
        if split + 12 > SHARD_HEADER_LEN + COMMON_HEADER_LEN + 12 {
            return Err(AuthError::Malformed);
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[t + 12..body_end]);
        let mut aad = [0u8; SHARD_HEADER_LEN + COMMON_HEADER_LEN + 12];
        aad[..split].copy_from_slice(&buf[..split]);
        aad[split..split + 12].copy_from_slice(&buf[t..t + 12]);
        let aad = Aad::from(&aad[..split + 12]);
        if encrypted {
            key.open_in_place_separate_tag(
                nonce(counter),
                aad,
                Tag::from(tag),
                &mut buf[split..t],
                0..,
            )
            .map_err(|_| AuthError::BadTag)?;
        } else {
            // The tag of the payload's encryption, computed on a copy and compared in constant time.
            self.scratch.clear();
            self.scratch.extend_from_slice(&buf[split..t]);
            let expected = key
                .seal_in_place_separate_tag(nonce(counter), aad, &mut self.scratch)
                .map_err(|_| AuthError::Malformed)?;
            if !constant_time_eq(expected.as_ref(), &tag) {
                return Err(AuthError::BadTag);
            }
        }
        // Authentic: now the replay rules.
        if known.is_none() {
            let epoch = epoch_of(session);
            if k.newest_epoch.is_some_and(|n| epoch < n) {
                return Err(AuthError::OldSession);
            }
            k.newest_epoch = Some(epoch);
            if k.sessions.len() >= SESSIONS_PER_KEY
                && let Some(oldest) = k.sessions.keys().min_by_key(|s| epoch_of(**s)).copied()
            {
                k.sessions.remove(&oldest);
            }
            let state = SessionState {
                key,
                objects: Window::new(None),
                heartbeats: Window::new(None),
            };
            k.sessions.insert(session, state);
        }
        let state = k.sessions.get_mut(&session).ok_or(AuthError::OldSession)?;
        if !state.window(counter).accept(counter) {
            return Err(AuthError::Replayed);
        }
        self.changed = true;
        // The plain v1 datagram: flags cleared, trailer dropped, a new CRC.
        buf[6..8].copy_from_slice(&0u16.to_be_bytes());
        let crc = crc32fast::hash(&buf[..t]);
        buf[t..t + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        Ok(t + CRC_LEN)
    }

    /// What to persist, if anything changed since the last call.
    pub fn take_persisted(&mut self) -> Option<Persisted> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let mut keys: Vec<KeyReplayState> = self
            .keys
            .iter()
            .filter_map(|(id, k)| {
                let epoch = k.newest_epoch?;
                let mut sessions: Vec<SessionFloor> = k
                    .sessions
                    .iter()
                    .map(|(s, state)| SessionFloor {
                        session: *s,
                        objects: state.objects.top.or(state.objects.floor),
                        heartbeats: state.heartbeats.top.or(state.heartbeats.floor),
                    })
                    .collect();
                sessions.sort_unstable();
                Some(KeyReplayState {
                    key_id: *id,
                    newest_epoch: epoch,
                    sessions,
                })
            })
            .collect();
        keys.sort_unstable();
        Some(Persisted { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Datagram, Heartbeat, ShardHeader, parse};

    fn psk(id: u32) -> Psk {
        Psk {
            id,
            key: [id as u8; KEY_LEN],
        }
    }

    fn shard(session: u64) -> Vec<u8> {
        let h = ShardHeader {
            session,
            object: 1,
            block: 0,
            shard: 0,
            data_shards: 1,
            parity_shards: 0,
            shard_len: 32,
            head_len: 10,
            content_len: 20,
            stripe: 0,
        };
        let mut out = Vec::new();
        h.emit(&[0x5a; 32], &mut out);
        out
    }

    fn sealed(s: &Sealer, plain: &[u8]) -> Vec<u8> {
        let mut out = plain.to_vec();
        s.seal(&mut out, 0);
        out
    }

    #[test]
    fn sealed_datagrams_open_to_the_original_and_any_change_is_refused() {
        for encrypt in [false, true] {
            let session = session_id(100, 7);
            let s = Sealer::new(&psk(1), session, encrypt);
            let mut o = Opener::new(vec![psk(1)], true, &Persisted::default());
            let plain = shard(session);
            let d = sealed(&s, &plain);
            assert_eq!(d.len(), plain.len() + TRAILER_LEN);
            assert_eq!(
                d.windows(32).any(|w| w == [0x5a; 32]),
                !encrypt,
                "payload hidden iff encrypted"
            );
            let mut b = d.clone();
            let n = o.open(&mut b).unwrap();
            assert_eq!(&b[..n], &plain[..]);
            assert!(matches!(parse(&b[..n]), Ok(Datagram::Shard(..))));
            // Replayed.
            let mut again = d.clone();
            assert_eq!(o.open(&mut again), Err(AuthError::Replayed));
            // Any byte changed (with the CRC fixed up, as a forger would).
            for i in [0usize, 9, 20, 50, d.len() - 20, d.len() - 5] {
                let mut f = sealed(&s, &plain);
                f[i] ^= 1;
                let end = f.len() - 4;
                let crc = crc32fast::hash(&f[..end]);
                f[end..].copy_from_slice(&crc.to_be_bytes());
                assert!(o.open(&mut f).is_err(), "byte {i} changed and accepted");
            }
            // Another key.
            let mut w = sealed(&Sealer::new(&psk(2), session, encrypt), &plain);
            assert_eq!(o.open(&mut w), Err(AuthError::UnknownKey));
            let mut plain_copy = plain.clone();
            assert_eq!(o.open(&mut plain_copy), Err(AuthError::Unauthenticated));
        }
    }

    #[test]
    fn old_sessions_and_counters_below_the_persisted_floor_are_refused() {
        let new = session_id(200, 1);
        let old = session_id(199, 2);
        let s_new = Sealer::new(&psk(1), new, false);
        let s_old = Sealer::new(&psk(1), old, false);
        let old_datagram = sealed(&s_old, &shard(old));
        let first = sealed(&s_new, &shard(new));
        let mut o = Opener::new(vec![psk(1)], true, &Persisted::default());
        assert!(o.open(&mut first.clone()).is_ok());
        assert_eq!(
            o.open(&mut old_datagram.clone()),
            Err(AuthError::OldSession)
        );
        let persisted = o.take_persisted().unwrap();
        assert_eq!(
            persisted.keys,
            vec![KeyReplayState {
                key_id: 1,
                newest_epoch: 200,
                sessions: vec![SessionFloor {
                    session: new,
                    objects: Some(0),
                    heartbeats: None,
                }],
            }]
        );
        assert!(o.take_persisted().is_none(), "nothing changed since");
        // After a restart: the first datagram is a replay, the next one is fresh.
        let mut o = Opener::new(vec![psk(1)], true, &persisted);
        assert_eq!(o.open(&mut first.clone()), Err(AuthError::Replayed));
        assert!(o.open(&mut sealed(&s_new, &shard(new))).is_ok());
        assert_eq!(
            o.open(&mut old_datagram.clone()),
            Err(AuthError::OldSession)
        );
    }

    #[test]
    fn a_receiver_restarted_after_a_heartbeat_accepts_the_datagrams_queued_before_it() {
        let session = session_id(400, 4);
        let s = Sealer::new(&psk(1), session, false);
        // The producer seals ahead of the link; the transmitter seals a heartbeat as it goes out.
        let queued: Vec<Vec<u8>> = (0..100).map(|_| sealed(&s, &shard(session))).collect();
        let mut hb = Heartbeat {
            session,
            seq: 0,
            datagrams_sent: 10,
            objects_sent: 0,
            interval_ms: 1000,
        }
        .to_bytes();
        s.seal_heartbeat(&mut hb, 0);
        let mut o = Opener::new(vec![psk(1)], true, &Persisted::default());
        for d in &queued[..10] {
            assert!(o.open(&mut d.clone()).is_ok());
        }
        assert!(o.open(&mut hb.clone()).is_ok());
        let persisted = o.take_persisted().unwrap();
        let mut o = Opener::new(vec![psk(1)], true, &persisted);
        for d in &queued[10..] {
            assert_eq!(
                o.open(&mut d.clone()).map(|_| ()),
                Ok(()),
                "sent after the restart"
            );
        }
        for d in queued[..10].iter().chain([&hb]) {
            assert_eq!(o.open(&mut d.clone()), Err(AuthError::Replayed));
        }
    }

    #[test]
    fn the_window_accepts_reordering_within_it_once() {
        let mut w = Window::new(None);
        for c in [5u64, 3, 4, 1000, 2, 70_000] {
            assert!(w.accept(c), "{c}");
        }
        assert!(!w.accept(4) && !w.accept(70_000));
        assert!(!w.accept(1000), "too far behind now: {}", 70_000 - 1000);
        assert!(w.accept(69_999) && w.accept(70_000 - WINDOW + 1));
        assert!(!w.accept(70_000 - WINDOW));
    }

    #[test]
    fn key_files_round_trip_and_mistakes_are_named() {
        let k = Psk {
            id: 7,
            key: [0xab; KEY_LEN],
        };
        assert_eq!(parse_key_file(&key_file_text(&k)).unwrap().key, k.key);
        assert_eq!(parse_key_file("id = 7\n").unwrap_err(), KeyFileError::Key);
        assert_eq!(
            parse_key_file("key = \"00\"\nid = 1").unwrap_err(),
            KeyFileError::Key
        );
        assert_eq!(
            parse_key_file("colour = 1").unwrap_err(),
            KeyFileError::Syntax(1)
        );
    }

    #[test]
    fn heartbeats_are_sealed_whole() {
        let session = session_id(300, 3);
        let s = Sealer::new(&psk(4), session, true);
        let hb = Heartbeat {
            session,
            seq: 1,
            datagrams_sent: 10,
            objects_sent: 2,
            interval_ms: 1000,
        };
        let mut b = hb.to_bytes();
        s.seal_heartbeat(&mut b, 0);
        let mut o = Opener::new(vec![psk(4)], true, &Persisted::default());
        let n = o.open(&mut b).unwrap();
        assert_eq!(parse(&b[..n]), Ok(Datagram::Heartbeat(hb)));
    }
}
