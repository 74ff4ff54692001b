//! The content of a record batch object (`ObjectKind::Records`, `docs/protocol.md` §4.1): a run of
//! consecutive records of one channel, with their sequence numbers and the sender's clock.
//!
//! The object's head carries the channel as its path; this is its content, verified by the
//! object's SHA-256 like a file's before anything of it is written.

use thiserror::Error;

use crate::wire::{be_u16, be_u32, be_u64};

/// Version of the batch layout (byte 0).
pub const BATCH_VERSION: u8 = 1;
/// Length of a batch's fixed header.
pub const BATCH_HEADER_LEN: usize = 32;
/// Bytes a record adds besides its topic and payload: time, topic length, payload length.
pub const RECORD_OVERHEAD: usize = 8 + 2 + 4;
/// Longest record payload accepted (a syslog message is at most a few KiB; an MQTT message more).
pub const MAX_RECORD_LEN: usize = 256 << 10;
/// Longest topic accepted (MQTT's own limit is 65,535 bytes; real topics are short).
pub const MAX_TOPIC_LEN: usize = 1024;
/// Largest batch content a sender emits and a receiver accepts.
pub const MAX_BATCH_LEN: usize = 1 << 20;
/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 64;

/// One record as it crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its place in its channel, counting from 0, never reused.
    pub seq: u64,
    /// When the sender took it, microseconds since the Unix epoch (the sender's clock).
    pub time_us: i64,
    /// Its MQTT topic (empty for other inputs).
    pub topic: Vec<u8>,
    /// The record itself, as the input gave it (no line ending).
    pub payload: Vec<u8>,
}

impl Record {
    /// Bytes it takes in a batch.
    pub fn wire_len(&self) -> usize {
        RECORD_OVERHEAD + self.topic.len() + self.payload.len()
    }
}

/// Consecutive records of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    /// The channel (the object's path).
    pub channel: String,
    /// The records, `seq` consecutive.
    pub records: Vec<Record>,
}

/// Why batch content was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Shorter than its header, or a record runs past the end.
    #[error("batch cut short")]
    Truncated,
    /// A version this receiver does not know.
    #[error("unknown batch version {0}")]
    Version(u8),
    /// Reserved bytes are not zero.
    #[error("reserved batch bytes are not 0")]
    Reserved,
    /// No records, or more content than [`MAX_BATCH_LEN`].
    #[error("batch of {0} bytes or without records")]
    Size(usize),
    /// Bytes left after the announced records.
    #[error("bytes after the last record")]
    Trailing,
    /// A record or topic longer than the limits, or a sequence number past 2^63.
    #[error("record out of bounds")]
    RecordBounds,
    /// The header's times or last sequence number disagree with the records.
    #[error("header disagrees with the records")]
    Inconsistent,
    /// The channel name is not one a channel may have.
    #[error("invalid channel name {0:?}")]
    Channel(String),
    /// Records that are not consecutive were given to the encoder.
    #[error("records not consecutive")]
    NotConsecutive,
}

/// Checks a channel name: 1 to [`MAX_CHANNEL_LEN`] of `A-Z a-z 0-9 . _ -`, not starting with a
/// dot (it names a folder of the share, so it must be one safe path component everywhere).
pub fn check_channel(name: &str) -> Result<(), BatchError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BatchError::Channel(name.to_string()))
    }
}

impl RecordBatch {
    /// Sequence number of the first record.
    pub fn first_seq(&self) -> u64 {
        self.records.first().map_or(0, |r| r.seq)
    }

    /// One past the last record's sequence number.
    pub fn end_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.seq + 1)
    }

    /// The object content for these records.
    pub fn encode(&self) -> Result<Vec<u8>, BatchError> {
        check_channel(&self.channel)?;
        let (Some(first), Some(last)) = (self.records.first(), self.records.last()) else {
            return Err(BatchError::Size(0));
        };
        let len = BATCH_HEADER_LEN + self.records.iter().map(Record::wire_len).sum::<usize>();
        if len > MAX_BATCH_LEN {
            return Err(BatchError::Size(len));
        }
        let count = u32::try_from(self.records.len()).map_err(|_| BatchError::Size(len))?;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&[BATCH_VERSION, 0, 0, 0]);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&first.seq.to_be_bytes());
        out.extend_from_slice(&first.time_us.to_be_bytes());
        out.extend_from_slice(&last.time_us.to_be_bytes());
        for (i, r) in self.records.iter().enumerate() {
            if r.seq != first.seq + i as u64 {
                return Err(BatchError::NotConsecutive);
            }
            if r.topic.len() > MAX_TOPIC_LEN || r.payload.len() > MAX_RECORD_LEN {
                return Err(BatchError::RecordBounds);
            }
            out.extend_from_slice(&r.time_us.to_be_bytes());
            out.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
            out.extend_from_slice(&(r.payload.len() as u32).to_be_bytes());
            out.extend_from_slice(&r.topic);
            out.extend_from_slice(&r.payload);
        }
        Ok(out)
    }

    /// Decodes the content of a record batch object of `channel`, checking every bound.
    pub fn decode(channel: &str, bytes: &[u8]) -> Result<Self, BatchError> {
        check_channel(channel)?;
        if bytes.len() > MAX_BATCH_LEN {
            return Err(BatchError::Size(bytes.len()));
        }
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        if bytes[0] != BATCH_VERSION {
            return Err(BatchError::Version(bytes[0]));
        }
        if bytes[1..4] != [0, 0, 0] {
            return Err(BatchError::Reserved);
        }
        let count = be_u32(bytes, 4) as usize;
        let first_seq = be_u64(bytes, 8);
        let first_time = be_u64(bytes, 16) as i64;
        let last_time = be_u64(bytes, 24) as i64;
        // Each record takes at least its overhead: a count beyond that is a lie, refused before
        // anything is allocated for it.
        if count == 0 || count > (bytes.len() - BATCH_HEADER_LEN) / RECORD_OVERHEAD {
            return Err(BatchError::Size(bytes.len()));
        }
        if first_seq
            .checked_add(count as u64)
            .is_none_or(|end| end > 1 << 63)
        {
            return Err(BatchError::RecordBounds);
        }
        let mut records = Vec::with_capacity(count);
        let mut at = BATCH_HEADER_LEN;
        for i in 0..count {
            let fixed = bytes
                .get(at..at + RECORD_OVERHEAD)
                .ok_or(BatchError::Truncated)?;
            let time_us = be_u64(fixed, 0) as i64;
            let topic_len = usize::from(be_u16(fixed, 8));
            let len = be_u32(fixed, 10) as usize;
            if topic_len > MAX_TOPIC_LEN || len > MAX_RECORD_LEN {
                return Err(BatchError::RecordBounds);
            }
            at += RECORD_OVERHEAD;
            let topic = bytes.get(at..at + topic_len).ok_or(BatchError::Truncated)?;
            at += topic_len;
            let payload = bytes.get(at..at + len).ok_or(BatchError::Truncated)?;
            at += len;
            records.push(Record {
                seq: first_seq + i as u64,
                time_us,
                topic: topic.to_vec(),
                payload: payload.to_vec(),
            });
        }
        if at != bytes.len() {
            return Err(BatchError::Trailing);
        }
        let times = (records[0].time_us, records[count - 1].time_us);
        if times != (first_time, last_time) {
            return Err(BatchError::Inconsistent);
        }
        Ok(RecordBatch {
            channel: channel.to_string(),
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch {
            channel: "syslog".into(),
            records: (0..3)
                .map(|i| Record {
                    seq: 10 + i,
                    time_us: 1_700_000_000_000_000 + i as i64,
                    topic: if i == 1 { b"plant/t1".to_vec() } else { vec![] },
                    payload: format!("line {i}").into_bytes(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch();
        let bytes = b.encode().unwrap();
        assert_eq!(RecordBatch::decode("syslog", &bytes), Ok(b.clone()));
        assert_eq!((b.first_seq(), b.end_seq()), (10, 13));
    }

    #[test]
    fn every_cut_and_every_flipped_count_is_refused() {
        let bytes = batch().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(
                RecordBatch::decode("syslog", &bytes[..n]).is_err(),
                "cut at {n}"
            );
        }
        let mut lie = bytes.clone();
        lie[7] = 200;
        assert!(RecordBatch::decode("syslog", &lie).is_err());
        let mut time = bytes.clone();
        time[31] ^= 1;
        assert_eq!(
            RecordBatch::decode("syslog", &time),
            Err(BatchError::Inconsistent)
        );
        let mut long = bytes;
        long.push(0);
        assert_eq!(
            RecordBatch::decode("syslog", &long),
            Err(BatchError::Trailing)
        );
    }

    #[test]
    fn channel_names_are_one_safe_component() {
        for ok in ["syslog", "hist-01", "a.b_c"] {
            assert!(check_channel(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            assert!(check_channel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_must_be_consecutive() {
        let mut b = batch();
        b.records[2].seq = 20;
        assert_eq!(b.encode(), Err(BatchError::NotConsecutive));
    }
}
