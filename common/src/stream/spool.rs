//! The stream spool's frame: how the inputs' process hands records to the sender, durably, in
//! append-only segment files (`STATE/streams/CHANNEL/FIRSTSEQ.seg`) that the sender follows.
//!
//! One frame per record, big-endian: `len u32` (of what follows, CRC excluded), `seq u64`,
//! `time_us i64`, `source u64` and `offset u64` (where a followed file's input stood after this
//! record, so that it resumes exactly there; 0 for other inputs), `topic_len u16`, topic,
//! payload, and a CRC32 of everything before it. A frame cut short (its writer stopped
//! mid-write) or failing its CRC ends what a reader takes of a segment.

use super::batch::{MAX_RECORD_LEN, MAX_TOPIC_LEN, Record};

/// Bytes of a frame besides its topic and payload.
pub const FRAME_OVERHEAD: usize = 4 + 8 + 8 + 8 + 8 + 2 + 4;

/// A record as spooled, with where its input stood after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The record.
    pub record: Record,
    /// A followed file's identity (device and inode folded) and offset after the record.
    pub source: (u64, u64),
}

/// What a reader found at the start of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame, and its length.
    Whole(Spooled, usize),
    /// Not enough bytes yet (the writer may be writing it).
    Partial,
    /// Not a valid frame: nothing after it in this segment can be trusted.
    Corrupt,
}

impl Spooled {
    /// Appends this record's frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let r = &self.record;
        let start = out.len();
        let len = FRAME_OVERHEAD - 8 + r.topic.len() + r.payload.len();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&r.seq.to_be_bytes());
        out.extend_from_slice(&r.time_us.to_be_bytes());
        out.extend_from_slice(&self.source.0.to_be_bytes());
        out.extend_from_slice(&self.source.1.to_be_bytes());
        out.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(&r.topic);
        out.extend_from_slice(&r.payload);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// Reads the frame at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Frame {
        let Some(len) = bytes.get(..4) else {
            return Frame::Partial;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let fixed = FRAME_OVERHEAD - 8;
        if len < fixed || len > fixed + MAX_TOPIC_LEN + MAX_RECORD_LEN {
            return Frame::Corrupt;
        }
        let total = 4 + len + 4;
        let Some(frame) = bytes.get(..total) else {
            return Frame::Partial;
        };
        let crc = u32::from_be_bytes([
            frame[total - 4],
            frame[total - 3],
            frame[total - 2],
            frame[total - 1],
        ]);
        if crc32fast::hash(&frame[..total - 4]) != crc {
            return Frame::Corrupt;
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&frame[at..at + 8]);
            u64::from_be_bytes(a)
        };
        let topic_len = usize::from(u16::from_be_bytes([frame[36], frame[37]]));
        if 38 + topic_len > total - 4 || topic_len > MAX_TOPIC_LEN {
            return Frame::Corrupt;
        }
        Frame::Whole(
            Spooled {
                record: Record {
                    seq: u64_at(4),
                    time_us: u64_at(12) as i64,
                    topic: frame[38..38 + topic_len].to_vec(),
                    payload: frame[38 + topic_len..total - 4].to_vec(),
                },
                source: (u64_at(20), u64_at(28)),
            },
            total,
        )
    }
}

/// The segment file name of a segment whose first record is `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The first sequence number of a segment named `name`, if it is one.
pub fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_cut_or_flipped_ones_are_told_apart() {
        let s = Spooled {
            record: Record {
                seq: 42,
                time_us: 7,
                topic: b"a/b".to_vec(),
                payload: b"hello".to_vec(),
            },
            source: (9, 100),
        };
        let mut bytes = Vec::new();
        s.encode(&mut bytes);
        assert_eq!(bytes.len(), FRAME_OVERHEAD + 8);
        assert_eq!(Spooled::decode(&bytes), Frame::Whole(s, bytes.len()));
        for n in 0..bytes.len() {
            assert_eq!(Spooled::decode(&bytes[..n]), Frame::Partial, "cut at {n}");
        }
        bytes[20] ^= 1;
        assert_eq!(Spooled::decode(&bytes), Frame::Corrupt);
        assert_eq!(segment_seq(&segment_name(12)), Some(12));
        assert_eq!(segment_seq("12.seg"), None);
    }
}
