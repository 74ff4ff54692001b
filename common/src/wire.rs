//! Datagram layout of protocol v1: parsing with validation, and emission.
//!
//! Every datagram starts with a 16-byte common header and ends with a CRC32 over everything before it.
//! All integers are big-endian. See `docs/protocol.md` for the byte tables.

use thiserror::Error;

/// The four bytes every checkvalve datagram starts with.
pub const MAGIC: [u8; 4] = *b"CVLV";
/// The protocol version of every datagram but a striped shard.
pub const VERSION: u8 = 1;
/// The version of a shard of a striped object (§3 of the spec): byte 31 carries the stripe.
pub const VERSION_STRIPED: u8 = 2;
/// Largest stripe a receiver accepts, as a power of two (4,096 blocks per stripe group).
pub const MAX_STRIPE_LOG2: u8 = 12;
/// Length of the header common to every datagram type.
pub const COMMON_HEADER_LEN: usize = 16;
/// Length of a shard datagram's header, common header included.
pub const SHARD_HEADER_LEN: usize = 44;
/// Length of the CRC32 that ends every datagram.
pub const CRC_LEN: usize = 4;
/// Bytes a shard datagram adds around its payload.
pub const SHARD_OVERHEAD: usize = SHARD_HEADER_LEN + CRC_LEN;
/// Total length of a heartbeat datagram.
pub const HEARTBEAT_LEN: usize = 52;
/// Largest payload a UDP datagram can carry over IPv4, the bound for any datagram we accept.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// Largest shard length that still fits in one UDP datagram.
pub const MAX_SHARD_LEN: usize = MAX_DATAGRAM_LEN - SHARD_OVERHEAD;
/// IPv6 and UDP headers: shards sized from a link's MTU leave room for the larger IP header, so
/// that they fit whichever family the link uses.
pub const IP_UDP_HEADERS: usize = 48;
/// A link's MTU unless the operator says otherwise (Ethernet).
pub const DEFAULT_MTU: u16 = 1500;

/// Bytes at the IP layer of a shard datagram of `shard_len` bytes carrying a `trailer` (the
/// authentication trailer, or nothing), with the larger (IPv6) header.
pub fn packet_len(shard_len: usize, trailer: usize) -> usize {
    IP_UDP_HEADERS + SHARD_OVERHEAD + shard_len + trailer
}

/// The longest shard, a multiple of 8 bytes, whose datagrams carrying `trailer` fit a link of
/// `mtu` bytes: 1,400 at 1,500 without authentication, 1,376 with it; `None` below the shortest
/// shard a sender produces.
pub fn shard_len_for_mtu(mtu: u16, trailer: usize) -> Option<u16> {
    let room = usize::from(mtu).checked_sub(packet_len(0, trailer))?;
    let len = room / 8 * 8;
    (len >= MIN_SHARD_LEN).then(|| u16::try_from(len).unwrap_or(u16::MAX))
}

/// Shortest shard length a sender produces (every object's head is longer, see the spec §3):
/// anything shorter only multiplies a receiver's per-shard bookkeeping.
pub const MIN_SHARD_LEN: usize = 32;
/// Longest encoded metadata head (the spec's limit; equals `meta::MAX_HEAD_LEN`).
pub const MAX_HEAD_LEN: usize = 8192;
/// The one object number never used, so that `object + 1` always exists.
pub const RESERVED_OBJECT: u64 = u64::MAX;
/// Reed-Solomon over GF(2^8) allows at most this many shards (data + parity) per block.
pub const MAX_SHARDS_PER_BLOCK: usize = 256;

/// Datagram type codes (byte 5).
pub mod kind {
    /// A shard of an object.
    pub const SHARD: u8 = 1;
    /// A heartbeat.
    pub const HEARTBEAT: u8 = 2;
    /// An announcement: objects named, with their sizes and digests (§2.4).
    pub const ANNOUNCE: u8 = 3;
    /// Stream tails: how far each record channel of the session has been sent (§2.5).
    pub const TAILS: u8 = 4;
}

/// Length of a stream tails datagram's header (common header, count, reserved).
pub const TAILS_HEADER_LEN: usize = 20;
/// Bytes of a tail entry besides its channel name: end, time, name length.
pub const TAIL_ENTRY_FIXED: usize = 8 + 8 + 1;

/// How far one record channel has been sent: every record below `end` went out whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTail {
    /// The channel.
    pub channel: String,
    /// One past the last sequence number sent.
    pub end: u64,
    /// Sender time of that last record, microseconds since the Unix epoch.
    pub time_us: i64,
}

/// A received stream tails datagram: its entries, checked to fill it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tails<'a> {
    /// Sender session.
    pub session: u64,
    entries: &'a [u8],
}

impl<'a> Tails<'a> {
    /// The entries, in order: channel (valid UTF-8; the name rules are the caller's to apply),
    /// end and time.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, u64, i64)> + 'a {
        let mut rest = self.entries;
        std::iter::from_fn(move || {
            let (entry, len) = tail_at(rest).ok()?;
            rest = &rest[len..];
            Some(entry)
        })
    }

    fn parse(bytes: &'a [u8], session: u64) -> Result<Self, WireError> {
        if bytes.len() < TAILS_HEADER_LEN + TAIL_ENTRY_FIXED + CRC_LEN {
            return Err(WireError::TooShort(bytes.len()));
        }
        if be_u16(bytes, 18) != 0 {
            return Err(WireError::InvalidHeader("reserved tails bytes are not 0"));
        }
        let count = be_u16(bytes, 16);
        let entries = &bytes[TAILS_HEADER_LEN..bytes.len() - CRC_LEN];
        let mut rest = entries;
        for _ in 0..count {
            let (_, len) = tail_at(rest)?;
            rest = &rest[len..];
        }
        if count == 0 || !rest.is_empty() {
            return Err(WireError::InvalidHeader(
                "tail entries do not fill the datagram exactly",
            ));
        }
        Ok(Tails { session, entries })
    }
}

/// The tail entry at the start of `bytes` and its length.
fn tail_at(bytes: &[u8]) -> Result<((&str, u64, i64), usize), WireError> {
    if bytes.len() < TAIL_ENTRY_FIXED {
        return Err(WireError::InvalidHeader("tail entry cut short"));
    }
    let len = TAIL_ENTRY_FIXED + usize::from(bytes[16]);
    let name = bytes
        .get(TAIL_ENTRY_FIXED..len)
        .ok_or(WireError::InvalidHeader("tail entry cut short"))?;
    let name = std::str::from_utf8(name)
        .map_err(|_| WireError::InvalidHeader("channel name is not UTF-8"))?;
    let end = be_u64(bytes, 0);
    if end > 1 << 63 {
        return Err(WireError::InvalidHeader("sequence number past 2^63"));
    }
    Ok(((name, end, be_u64(bytes, 8) as i64), len))
}

/// Stream tails datagrams of `session` carrying `tails`, packed in order, each at most `max_len`
/// bytes; a tail whose channel name is longer than 255 bytes is left out.
pub fn emit_tails(session: u64, tails: &[StreamTail], max_len: usize) -> Vec<Vec<u8>> {
    let room = max_len.saturating_sub(TAILS_HEADER_LEN + CRC_LEN);
    let mut out = Vec::new();
    let mut group: Vec<&StreamTail> = Vec::new();
    let mut used = 0;
    let flush = |group: &mut Vec<&StreamTail>, out: &mut Vec<Vec<u8>>| {
        if group.is_empty() {
            return;
        }
        let mut d = Vec::with_capacity(max_len);
        emit_common(&mut d, VERSION, kind::TAILS, session);
        d.extend_from_slice(&(group.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0; 2]);
        for t in group.iter() {
            d.extend_from_slice(&t.end.to_be_bytes());
            d.extend_from_slice(&t.time_us.to_be_bytes());
            d.push(t.channel.len() as u8);
            d.extend_from_slice(t.channel.as_bytes());
        }
        let crc = crc32fast::hash(&d);
        d.extend_from_slice(&crc.to_be_bytes());
        out.push(d);
        group.clear();
    };
    for t in tails {
        let len = TAIL_ENTRY_FIXED + t.channel.len();
        if t.channel.len() > usize::from(u8::MAX) || len > room {
            continue;
        }
        if used + len > room || group.len() == usize::from(u16::MAX) {
            flush(&mut group, &mut out);
            used = 0;
        }
        group.push(t);
        used += len;
    }
    flush(&mut group, &mut out);
    out
}

/// Length of an announcement's header (common header, count, reserved).
pub const ANNOUNCE_HEADER_LEN: usize = 20;
/// Bytes of an announcement entry besides its path: object, size, digest, path length.
pub const ANNOUNCE_ENTRY_FIXED: usize = 8 + 8 + 32 + 2;

/// An object named in an announcement, as the sender makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Object number in the session.
    pub object: u64,
    /// Content length in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub digest: [u8; 32],
    /// Its path, as in its metadata head.
    pub path: String,
}

impl Announced {
    /// Bytes it takes in an announcement.
    pub fn wire_len(&self) -> usize {
        ANNOUNCE_ENTRY_FIXED + self.path.len()
    }
}

/// One entry of a received announcement, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedRef<'a> {
    /// Object number in the session.
    pub object: u64,
    /// Content length in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub digest: &'a [u8],
    /// Its path (valid UTF-8; the path rules are the caller's to apply).
    pub path: &'a str,
}

/// A received announcement: its entries, checked to fill it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// Sender session.
    pub session: u64,
    entries: &'a [u8],
}

impl<'a> Announcement<'a> {
    /// The entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = AnnouncedRef<'a>> + 'a {
        let mut rest = self.entries;
        std::iter::from_fn(move || {
            let (entry, len) = entry_at(rest).ok()?;
            rest = &rest[len..];
            Some(entry)
        })
    }

    fn parse(bytes: &'a [u8], session: u64) -> Result<Self, WireError> {
        if bytes.len() < ANNOUNCE_HEADER_LEN + ANNOUNCE_ENTRY_FIXED + CRC_LEN {
            return Err(WireError::TooShort(bytes.len()));
        }
        if be_u16(bytes, 18) != 0 {
            return Err(WireError::InvalidHeader(
                "reserved announcement bytes are not 0",
            ));
        }
        let count = be_u16(bytes, 16);
        let entries = &bytes[ANNOUNCE_HEADER_LEN..bytes.len() - CRC_LEN];
        let mut rest = entries;
        for _ in 0..count {
            let (_, len) = entry_at(rest)?;
            rest = &rest[len..];
        }
        if count == 0 || !rest.is_empty() {
            return Err(WireError::InvalidHeader(
                "announcement entries do not fill it exactly",
            ));
        }
        Ok(Announcement { session, entries })
    }
}

/// The entry at the start of `bytes` and its length.
fn entry_at(bytes: &[u8]) -> Result<(AnnouncedRef<'_>, usize), WireError> {
    if bytes.len() < ANNOUNCE_ENTRY_FIXED {
        return Err(WireError::InvalidHeader("announcement entry cut short"));
    }
    let path_len = usize::from(be_u16(bytes, 48));
    let len = ANNOUNCE_ENTRY_FIXED + path_len;
    let path = bytes
        .get(ANNOUNCE_ENTRY_FIXED..len)
        .ok_or(WireError::InvalidHeader("announcement entry cut short"))?;
    let path = std::str::from_utf8(path)
        .map_err(|_| WireError::InvalidHeader("announced path is not UTF-8"))?;
    let object = be_u64(bytes, 0);
    if object == RESERVED_OBJECT {
        return Err(WireError::InvalidHeader("object number 2^64-1 is reserved"));
    }
    Ok((
        AnnouncedRef {
            object,
            size: be_u64(bytes, 8),
            digest: &bytes[16..48],
            path,
        },
        len,
    ))
}

/// Announcement datagrams of `session` naming `entries`, packed in order, each at most `max_len`
/// bytes; an entry that does not fit an announcement of its own is left out.
pub fn emit_announcement(session: u64, entries: &[&Announced], max_len: usize) -> Vec<Vec<u8>> {
    let room = max_len.saturating_sub(ANNOUNCE_HEADER_LEN + CRC_LEN);
    let mut out = Vec::new();
    let mut group: Vec<&Announced> = Vec::new();
    let mut used = 0;
    let flush = |group: &mut Vec<&Announced>, out: &mut Vec<Vec<u8>>| {
        if group.is_empty() {
            return;
        }
        let mut d = Vec::with_capacity(max_len);
        emit_common(&mut d, VERSION, kind::ANNOUNCE, session);
        d.extend_from_slice(&(group.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0; 2]);
        for e in group.iter() {
            d.extend_from_slice(&e.object.to_be_bytes());
            d.extend_from_slice(&e.size.to_be_bytes());
            d.extend_from_slice(&e.digest);
            d.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
            d.extend_from_slice(e.path.as_bytes());
        }
        let crc = crc32fast::hash(&d);
        d.extend_from_slice(&crc.to_be_bytes());
        out.push(d);
        group.clear();
    };
    for e in entries {
        let len = e.wire_len();
        if len > room || e.path.len() > usize::from(u16::MAX) {
            continue;
        }
        if used + len > room || group.len() == usize::from(u16::MAX) {
            flush(&mut group, &mut out);
            used = 0;
        }
        group.push(e);
        used += len;
    }
    flush(&mut group, &mut out);
    out
}

/// Why a datagram was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the smallest valid datagram.
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    /// Does not start with the checkvalve magic.
    #[error("bad magic")]
    BadMagic,
    /// The CRC32 over the datagram does not match its last four bytes.
    #[error("CRC32 mismatch")]
    BadCrc,
    /// A protocol version this receiver does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A datagram type this receiver does not know.
    #[error("unknown datagram type {0}")]
    UnknownType(u8),
    /// Flags this receiver does not understand (for example an authentication trailer).
    #[error("unsupported flags {0:#06x}")]
    UnsupportedFlags(u16),
    /// The datagram's length does not match what its header announces.
    #[error("length {actual} does not match the header ({expected})")]
    LengthMismatch {
        /// Length the header implies.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A header field is out of range or inconsistent with the others.
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
}

/// Header of a shard datagram: one shard of one block of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardHeader {
    /// Sender session, chosen at random when the sender starts.
    pub session: u64,
    /// Object number within the session, counting from 0.
    pub object: u64,
    /// Block number within the object (0 = metadata head, last = digest trailer).
    pub block: u32,
    /// Index of this shard within its block: data shards first, then parity.
    pub shard: u8,
    /// Nominal data shards per content block of this object (`K`).
    pub data_shards: u8,
    /// Parity shards of this block (`m`).
    pub parity_shards: u8,
    /// Length of every shard of this object, in bytes (`L`).
    pub shard_len: u16,
    /// Length of the encoded metadata head, in bytes.
    pub head_len: u16,
    /// Length of the object's content, in bytes.
    pub content_len: u64,
    /// Content blocks per stripe group, as a power of two (`0`: one, the unstriped layout).
    pub stripe: u8,
}

/// Periodic liveness and accounting datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender session.
    pub session: u64,
    /// Heartbeat sequence number within the session.
    pub seq: u64,
    /// Datagrams sent in this session before this heartbeat (heartbeats included).
    pub datagrams_sent: u64,
    /// Objects whose first datagram has been sent (= next object number).
    pub objects_sent: u64,
    /// Interval between heartbeats, in milliseconds.
    pub interval_ms: u32,
}

/// A parsed, CRC-checked datagram borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// One shard of a block.
    Shard(ShardHeader, &'a [u8]),
    /// A heartbeat.
    Heartbeat(Heartbeat),
    /// An announcement.
    Announce(Announcement<'a>),
    /// Stream tails.
    Tails(Tails<'a>),
}

/// The big-endian `u16` at `at` (the caller checked the length).
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian `u32` at `at`.
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian `u64` at `at`.
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl ShardHeader {
    /// Checks the field ranges that do not depend on the rest of the object.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.data_shards == 0 {
            return Err(WireError::InvalidHeader("data_shards is 0"));
        }
        let l = usize::from(self.shard_len);
        if !(MIN_SHARD_LEN..=MAX_SHARD_LEN).contains(&l) {
            return Err(WireError::InvalidHeader("shard_len out of range"));
        }
        if self.head_len == 0 || usize::from(self.head_len) > MAX_HEAD_LEN {
            return Err(WireError::InvalidHeader("head_len out of range"));
        }
        if self.object == RESERVED_OBJECT {
            return Err(WireError::InvalidHeader("object number 2^64-1 is reserved"));
        }
        Ok(())
    }

    /// Parses and checks a shard datagram's header and returns its payload.
    fn parse(bytes: &[u8], session: u64) -> Result<(Self, &[u8]), WireError> {
        if bytes.len() < SHARD_OVERHEAD {
            return Err(WireError::TooShort(bytes.len()));
        }
        let h = ShardHeader {
            session,
            object: be_u64(bytes, 16),
            block: be_u32(bytes, 24),
            shard: bytes[28],
            data_shards: bytes[29],
            parity_shards: bytes[30],
            shard_len: be_u16(bytes, 32),
            head_len: be_u16(bytes, 34),
            content_len: be_u64(bytes, 36),
            stripe: bytes[31],
        };
        let expected = SHARD_OVERHEAD + usize::from(h.shard_len);
        if bytes.len() != expected {
            return Err(WireError::LengthMismatch {
                expected,
                actual: bytes.len(),
            });
        }
        match (bytes[4], h.stripe) {
            (VERSION, 0) => {}
            (VERSION, _) => return Err(WireError::InvalidHeader("reserved byte 31 is not 0")),
            (_, 1..=MAX_STRIPE_LOG2) => {}
            _ => return Err(WireError::InvalidHeader("stripe out of range (1 to 12)")),
        }
        h.validate()?;
        Ok((h, &bytes[SHARD_HEADER_LEN..bytes.len() - CRC_LEN]))
    }

    /// Appends the datagram for this header and `payload` to `out`.
    ///
    /// `payload` must be exactly `shard_len` bytes.
    pub fn emit(&self, payload: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(payload.len(), usize::from(self.shard_len));
        let start = out.len();
        let version = if self.stripe == 0 {
            VERSION
        } else {
            VERSION_STRIPED
        };
        emit_common(out, version, kind::SHARD, self.session);
        out.extend_from_slice(&self.object.to_be_bytes());
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&[
            self.shard,
            self.data_shards,
            self.parity_shards,
            self.stripe,
        ]);
        out.extend_from_slice(&self.shard_len.to_be_bytes());
        out.extend_from_slice(&self.head_len.to_be_bytes());
        out.extend_from_slice(&self.content_len.to_be_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
}

impl Heartbeat {
    /// Appends the datagram for this heartbeat to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        emit_common(out, VERSION, kind::HEARTBEAT, self.session);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.datagrams_sent.to_be_bytes());
        out.extend_from_slice(&self.objects_sent.to_be_bytes());
        out.extend_from_slice(&self.interval_ms.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// Encodes this heartbeat as a fresh datagram.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEARTBEAT_LEN);
        self.emit(&mut v);
        v
    }

    fn parse(bytes: &[u8], session: u64) -> Result<Self, WireError> {
        if bytes.len() != HEARTBEAT_LEN {
            return Err(WireError::LengthMismatch {
                expected: HEARTBEAT_LEN,
                actual: bytes.len(),
            });
        }
        if be_u32(bytes, 44) != 0 {
            return Err(WireError::InvalidHeader(
                "reserved heartbeat bytes are not 0",
            ));
        }
        Ok(Heartbeat {
            session,
            seq: be_u64(bytes, 16),
            datagrams_sent: be_u64(bytes, 24),
            objects_sent: be_u64(bytes, 32),
            interval_ms: be_u32(bytes, 40),
        })
    }
}

fn emit_common(out: &mut Vec<u8>, version: u8, kind: u8, session: u64) {
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&session.to_be_bytes());
}

/// Parses one datagram, checking magic, CRC, version, flags, type and lengths, in that order.
pub fn parse(bytes: &[u8]) -> Result<Datagram<'_>, WireError> {
    if bytes.len() < COMMON_HEADER_LEN + CRC_LEN {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(body) != be_u32(crc, 0) {
        return Err(WireError::BadCrc);
    }
    let version = bytes[4];
    if version != VERSION && !(version == VERSION_STRIPED && bytes[5] == kind::SHARD) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let flags = be_u16(bytes, 6);
    if flags != 0 {
        return Err(WireError::UnsupportedFlags(flags));
    }
    let session = be_u64(bytes, 8);
    match bytes[5] {
        kind::SHARD => {
            let (h, payload) = ShardHeader::parse(bytes, session)?;
            Ok(Datagram::Shard(h, payload))
        }
        kind::HEARTBEAT => Ok(Datagram::Heartbeat(Heartbeat::parse(bytes, session)?)),
        kind::ANNOUNCE => Ok(Datagram::Announce(Announcement::parse(bytes, session)?)),
        kind::TAILS => Ok(Datagram::Tails(Tails::parse(bytes, session)?)),
        other => Err(WireError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sized_from_the_mtu_fit_it_keyed_or_not() {
        let trailer = crate::auth::TRAILER_LEN;
        assert_eq!(shard_len_for_mtu(1500, 0), Some(1400));
        assert_eq!(shard_len_for_mtu(1500, trailer), Some(1376));
        assert_eq!(shard_len_for_mtu(9000, 0), Some(8904));
        for mtu in [576, 1280, 1500, 9000, u16::MAX] {
            for t in [0, trailer] {
                let s = shard_len_for_mtu(mtu, t).expect("fits");
                assert!(packet_len(usize::from(s), t) <= usize::from(mtu));
                assert!(packet_len(usize::from(s) + 8, t) > usize::from(mtu));
            }
        }
        assert_eq!(shard_len_for_mtu(100, 0), None);
    }

    fn header() -> ShardHeader {
        ShardHeader {
            session: 0x0102_0304_0506_0708,
            object: 7,
            block: 3,
            shard: 5,
            data_shards: 64,
            parity_shards: 22,
            shard_len: 32,
            head_len: 60,
            content_len: 1000,
            stripe: 0,
        }
    }

    #[test]
    fn shard_round_trips() {
        let mut out = Vec::new();
        header().emit(&[7; 32], &mut out);
        assert_eq!(out.len(), SHARD_OVERHEAD + 32);
        assert_eq!(parse(&out), Ok(Datagram::Shard(header(), &[7u8; 32][..])));
    }

    #[test]
    fn heartbeat_round_trips() {
        let hb = Heartbeat {
            session: 9,
            seq: 1,
            datagrams_sent: 100,
            objects_sent: 3,
            interval_ms: 1000,
        };
        let bytes = hb.to_bytes();
        assert_eq!(bytes.len(), HEARTBEAT_LEN);
        assert_eq!(parse(&bytes), Ok(Datagram::Heartbeat(hb)));
    }

    #[test]
    fn tails_round_trip_and_cut_ones_are_refused() {
        let tails = vec![
            StreamTail {
                channel: "syslog".into(),
                end: 100,
                time_us: -5,
            },
            StreamTail {
                channel: "hist".into(),
                end: 1 << 63,
                time_us: 7,
            },
        ];
        let out = emit_tails(3, &tails, 1400);
        assert_eq!(out.len(), 1);
        let Ok(Datagram::Tails(t)) = parse(&out[0]) else {
            panic!("not tails");
        };
        assert_eq!(t.session, 3);
        let got: Vec<_> = t.entries().collect();
        assert_eq!(got, [("syslog", 100, -5), ("hist", 1 << 63, 7)]);
        let two = emit_tails(3, &tails, TAILS_HEADER_LEN + CRC_LEN + TAIL_ENTRY_FIXED + 6);
        assert_eq!(two.len(), 2);
        let mut cut = out[0].clone();
        cut.truncate(cut.len() - CRC_LEN - 1);
        let crc = crc32fast::hash(&cut);
        cut.extend_from_slice(&crc.to_be_bytes());
        assert!(parse(&cut).is_err());
    }

    #[test]
    fn unknown_flags_are_rejected_even_with_a_valid_crc() {
        let mut out = Vec::new();
        header().emit(&[7; 32], &mut out);
        out[7] = 1;
        let n = out.len() - CRC_LEN;
        let crc = crc32fast::hash(&out[..n]);
        out[n..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(parse(&out), Err(WireError::UnsupportedFlags(1)));
    }

    #[test]
    fn length_must_match_the_header() {
        let mut out = Vec::new();
        header().emit(&[7; 32], &mut out);
        out.truncate(out.len() - CRC_LEN - 1);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(parse(&out), Err(WireError::LengthMismatch { .. })));
    }

    fn reemit(h: ShardHeader) -> Result<(), WireError> {
        let mut out = Vec::new();
        h.emit(&vec![0; usize::from(h.shard_len)], &mut out);
        parse(&out).map(|_| ())
    }

    #[test]
    fn field_limits_are_enforced() {
        assert!(
            reemit(ShardHeader {
                shard_len: 31,
                ..header()
            })
            .is_err()
        );
        assert!(
            reemit(ShardHeader {
                head_len: 8193,
                ..header()
            })
            .is_err()
        );
        assert!(
            reemit(ShardHeader {
                head_len: 8192,
                ..header()
            })
            .is_ok()
        );
        assert!(
            reemit(ShardHeader {
                object: u64::MAX,
                ..header()
            })
            .is_err()
        );
        assert!(
            reemit(ShardHeader {
                object: u64::MAX - 1,
                ..header()
            })
            .is_ok()
        );
    }
}
