//! The test vectors published in `docs/protocol.md` are exactly what this crate emits and accepts.

use std::time::Instant;

use checkvalve_common::assembler::{Assembler, AssemblerConfig, Event};
use checkvalve_common::fec::Fec;
use checkvalve_common::interleave::{Batch, InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use checkvalve_common::stripe::{Sink, StripedEncoder};
use checkvalve_common::wire::Heartbeat;

const SESSION: u64 = 0x0123_4567_89ab_cdef;
const CONTENT: &[u8] = b"Hello, diode!\n";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The vector object: `hello.txt`, FEC 4:2 with 8-byte shards, no minimum group span.
fn vector_datagrams() -> Vec<String> {
    let head = Head {
        path: "hello.txt".into(),
        size: CONTENT.len() as u64,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    };
    let fec = FecParams {
        data_shards: 4,
        parity_shards: 2,
        shard_len: 32,
    };
    let (mut enc, head_block) = ObjectEncoder::new(SESSION, 0, &head, fec).unwrap();
    let mut blocks = vec![head_block];
    enc.push(CONTENT, &mut blocks).unwrap();
    enc.finish(&mut blocks).unwrap();
    let mut inter = Interleaver::new(InterleaveParams {
        depth: 64,
        min_span: 0,
        stripe_bytes: 0,
    });
    for b in blocks {
        assert!(inter.push(b).unwrap().is_none());
    }
    let batch = inter.flush().unwrap().unwrap();
    batch.iter().map(hex).collect()
}

fn vector_heartbeat() -> String {
    hex(&Heartbeat {
        session: SESSION,
        seq: 2,
        datagrams_sent: 9,
        objects_sent: 1,
        interval_ms: 1000,
    }
    .to_bytes())
}

/// Hex lines of the fenced block that follows `marker` in the spec.
fn spec_block(marker: &str) -> Vec<String> {
    let spec = include_str!("../../docs/protocol.md");
    let at = spec
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in docs/protocol.md"));
    let rest = &spec[at..];
    let start = rest.find("```text\n").expect("fenced block") + 8;
    let end = rest[start..].find("```").expect("closing fence") + start;
    rest[start..end]
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn emitted_datagrams_match_the_spec() {
    let ours = vector_datagrams();
    let spec = spec_block("<!-- vector:object -->");
    assert_eq!(
        spec,
        ours,
        "docs/protocol.md vectors are stale; emitted:\n{}",
        ours.join("\n")
    );
    assert_eq!(
        spec_block("<!-- vector:heartbeat -->"),
        vec![vector_heartbeat()]
    );
}

#[test]
fn spec_datagrams_decode_with_two_data_shards_lost_per_block() {
    let spec = spec_block("<!-- vector:object -->");
    // Drop the first two data shards of every block: each must be rebuilt from its parity.
    let kept: Vec<Vec<u8>> = spec
        .iter()
        .map(|h| unhex(h))
        .filter(|d| d[28] >= 2)
        .collect();
    assert_eq!(kept.len(), spec.len() - 6);
    let mut asm = Assembler::new(AssemblerConfig::default(), Instant::now());
    let now = Instant::now();
    let mut content = Vec::new();
    let mut complete = None;
    for d in &kept {
        asm.handle_datagram(now, d).unwrap();
        while let Some(ev) = asm.poll_event() {
            match ev {
                Event::Content { data, .. } => content.extend(data),
                Event::Complete { head, digest, .. } => complete = Some((head, digest)),
                _ => {}
            }
        }
    }
    let (head, _digest) = complete.expect("object completes from parity alone");
    assert_eq!(head.path, "hello.txt");
    assert_eq!(content, CONTENT);
}

fn vector_psk() -> checkvalve_common::auth::Psk {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = i as u8;
    }
    checkvalve_common::auth::Psk { id: 1, key }
}

/// The authenticated first heartbeat (counter 2^63), the encrypted first datagram (counter 0) and
/// the authenticated second one (counter 1).
fn vector_authenticated() -> (String, Vec<String>) {
    use checkvalve_common::auth::{Sealer, session_key_bytes};
    let psk = vector_psk();
    let key = hex(&session_key_bytes(&psk, SESSION));
    let mut hb = unhex(&vector_heartbeat());
    Sealer::new(&psk, SESSION, false).seal_heartbeat(&mut hb, 0);
    let mut shard = unhex(&vector_datagrams()[0]);
    Sealer::new(&psk, SESSION, true).seal(&mut shard, 0);
    let mut clear = unhex(&vector_datagrams()[1]);
    Sealer::new(&psk, SESSION, false)
        .starting_at(1)
        .seal(&mut clear, 0);
    (key, vec![hex(&hb), hex(&shard), hex(&clear)])
}

#[test]
fn authenticated_vectors_match_the_spec_and_open_to_the_plain_datagrams() {
    use checkvalve_common::auth::{Opener, Persisted};
    let (key, ours) = vector_authenticated();
    assert_eq!(
        spec_block("<!-- vector:session-key -->"),
        vec![key.clone()],
        "session key in docs/protocol.md is stale: {key}"
    );
    let spec = spec_block("<!-- vector:authenticated -->");
    assert_eq!(
        spec,
        ours,
        "docs/protocol.md authenticated vectors are stale; emitted:\n{}",
        ours.join("\n")
    );
    let mut opener = Opener::new(vec![vector_psk()], true, &Persisted::default());
    let plain = [
        vector_heartbeat(),
        vector_datagrams()[0].clone(),
        vector_datagrams()[1].clone(),
    ];
    for (sealed, plain) in spec.iter().zip(plain) {
        let mut b = unhex(sealed);
        let n = opener.open(&mut b).unwrap();
        assert_eq!(hex(&b[..n]), plain);
    }
}

/// The striped vector object: `stripes.txt`, 98 bytes, FEC 2:1 with 32-byte shards, stripe 1
/// (groups of two blocks), no minimum group span.
fn vector_striped() -> Vec<String> {
    let head = Head {
        path: "stripes.txt".into(),
        size: 98,
        mtime_secs: 1_700_000_000,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    };
    let fec = FecParams {
        data_shards: 2,
        parity_shards: 1,
        shard_len: 32,
    };
    let mut enc = StripedEncoder::new(SESSION, 1, &head, fec, 1, 0).unwrap();
    let mut out = Vec::new();
    let mut send = |b: Batch| {
        out.extend(b.iter().map(hex));
        true
    };
    let mut sink = Sink::new(1 << 20, &mut send);
    enc.push(&CONTENT.repeat(7), None, &mut sink).unwrap();
    enc.finish(false, None, &mut sink).unwrap();
    assert!(sink.finish(2));
    out
}

#[test]
fn striped_vectors_match_the_spec_and_rebuild_a_lost_data_shard() {
    let ours = vector_striped();
    let spec = spec_block("<!-- vector:striped -->");
    assert_eq!(
        spec,
        ours,
        "docs/protocol.md striped vectors are stale; emitted:\n{}",
        ours.join("\n")
    );
    // Without the content's first datagram (block 1, shard 0), block 1 is rebuilt from the
    // shard that arrived, read back from the content written so far, and its parity.
    let mut asm = Assembler::new(AssemblerConfig::default(), Instant::now());
    let now = Instant::now();
    let mut file = vec![0u8; 98];
    let mut complete = None;
    let mut fec = Fec::default();
    for d in spec
        .iter()
        .map(|h| unhex(h))
        .filter(|d| !(d[27] == 1 && d[28] == 0))
    {
        asm.handle_datagram(now, &d).unwrap();
        while let Some(ev) = asm.poll_event() {
            match ev {
                Event::Content { offset, data, .. } => {
                    file[offset as usize..offset as usize + data.len()].copy_from_slice(&data)
                }
                Event::Repair { repair, .. } => {
                    let rebuilt = repair
                        .rebuild(&mut fec, Vec::new(), |buf, at| {
                            buf.copy_from_slice(&file[at as usize..at as usize + buf.len()]);
                            Ok(())
                        })
                        .unwrap();
                    for (at, bytes) in rebuilt.shards() {
                        file[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                    }
                }
                Event::Complete { head, .. } => complete = Some(head),
                _ => {}
            }
        }
    }
    assert_eq!(complete.expect("object completes").path, "stripes.txt");
    assert_eq!(file, CONTENT.repeat(7));
}

/// The announcement of the vector object: `hello.txt`, 14 bytes, its digest.
fn vector_announcement() -> String {
    use sha2::Digest;
    let entry = checkvalve_common::wire::Announced {
        object: 0,
        size: CONTENT.len() as u64,
        digest: sha2::Sha256::digest(CONTENT).into(),
        path: "hello.txt".into(),
    };
    let mut out = checkvalve_common::wire::emit_announcement(SESSION, &[&entry], 1448);
    assert_eq!(out.len(), 1);
    hex(&out.remove(0))
}

#[test]
fn the_announcement_vector_matches_the_spec_and_parses_back() {
    let ours = vector_announcement();
    assert_eq!(
        spec_block("<!-- vector:announcement -->"),
        vec![ours.clone()],
        "docs/protocol.md announcement vector is stale; emitted:\n{ours}"
    );
    let bytes = unhex(&ours);
    let Ok(checkvalve_common::wire::Datagram::Announce(a)) = checkvalve_common::wire::parse(&bytes)
    else {
        panic!("not an announcement");
    };
    let entries: Vec<_> = a.entries().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].object, entries[0].size, entries[0].path),
        (0, 14, "hello.txt")
    );
}

fn vector_record_batch() -> checkvalve_common::stream::batch::RecordBatch {
    use checkvalve_common::stream::batch::{Record, RecordBatch};
    RecordBatch {
        channel: "syslog".into(),
        records: vec![
            Record {
                seq: 41,
                time_us: 1_700_000_000_000_001,
                topic: vec![],
                payload: b"pump on".to_vec(),
            },
            Record {
                seq: 42,
                time_us: 1_700_000_000_500_000,
                topic: b"plant/t1".to_vec(),
                payload: b"21.5".to_vec(),
            },
        ],
    }
}

#[test]
fn the_record_batch_vector_matches_the_spec_and_decodes_back() {
    use checkvalve_common::stream::batch::RecordBatch;
    let batch = vector_record_batch();
    let ours = hex(&batch.encode().expect("encodes"));
    assert_eq!(
        spec_block("<!-- vector:record-batch -->"),
        vec![ours.clone()],
        "docs/protocol.md record batch vector is stale; emitted:\n{ours}"
    );
    assert_eq!(RecordBatch::decode("syslog", &unhex(&ours)), Ok(batch));
}

#[test]
fn the_tails_vector_matches_the_spec_and_parses_back() {
    use checkvalve_common::wire::{Datagram, StreamTail, emit_tails, parse};
    let session = checkvalve_common::stream::stream_session(SESSION);
    let tail = StreamTail {
        channel: "syslog".into(),
        end: 43,
        time_us: 1_700_000_000_500_000,
    };
    let mut out = emit_tails(session, &[tail], 1448);
    assert_eq!(out.len(), 1);
    let ours = hex(&out.remove(0));
    assert_eq!(
        spec_block("<!-- vector:tails -->"),
        vec![ours.clone()],
        "docs/protocol.md tails vector is stale; emitted:\n{ours}"
    );
    let bytes = unhex(&ours);
    let Ok(Datagram::Tails(t)) = parse(&bytes) else {
        panic!("not tails");
    };
    assert_eq!(t.session, session);
    assert_eq!(
        t.entries().collect::<Vec<_>>(),
        [("syslog", 43, 1_700_000_000_500_000)]
    );
}
