//! Entry points for the fuzzers (`fuzz/`) and for the test that replays their corpora: each takes
//! arbitrary bytes and must never panic, whatever they hold.

use std::time::{Duration, Instant};

use crate::assembler::{Assembler, AssemblerConfig, Event};
use crate::auth::{KEY_LEN, Opener, Persisted, Psk};

/// `data` with its last four bytes replaced by the CRC of the rest, so that the fuzzer reaches
/// what lies behind the CRC check.
fn with_crc(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.len() >= 4 {
        let end = d.len() - 4;
        let crc = crc32fast::hash(&d[..end]);
        d[end..].copy_from_slice(&crc.to_be_bytes());
    }
    d
}

/// A datagram (as given, and with its CRC made valid) through authentication (keys with id 1
/// and 2) and then the parser.
pub fn datagram(data: &[u8]) {
    let _ = crate::wire::parse(data);
    let fixed = with_crc(data);
    let _ = crate::wire::parse(&fixed);
    let keys = vec![
        Psk {
            id: 1,
            key: core::array::from_fn::<u8, KEY_LEN, _>(|i| i as u8),
        },
        Psk {
            id: 2,
            key: [0xff; KEY_LEN],
        },
    ];
    let mut opener = Opener::new(keys, false, &Persisted::default());
    for mut buf in [data.to_vec(), fixed] {
        if let Ok(n) = opener.open(&mut buf) {
            let _ = crate::wire::parse(&buf[..n]);
        }
    }
}

/// Bytes as a metadata head.
pub fn metadata(data: &[u8]) {
    if let Ok(head) = crate::meta::Head::decode(data) {
        let _ = crate::meta::check_path(&head.path);
        // What decodes re-encodes to something that decodes to the same.
        if let Ok(again) = head.encode().and_then(|b| crate::meta::Head::decode(&b)) {
            assert_eq!(again, head);
        }
    }
}

/// Bytes as a sequence of datagrams (each prefixed by its length, two bytes big-endian; a length
/// with its top bit set means: make this datagram's CRC valid) fed to an assembler with a small
/// memory bound, time advancing 50 ms per datagram.
pub fn assembler(data: &[u8]) {
    let config = AssemblerConfig {
        max_pending_bytes: 1 << 20,
        max_objects: 16,
        max_sessions: 4,
        object_timeout: Duration::from_secs(1),
        ..AssemblerConfig::default()
    };
    let t0 = Instant::now();
    let mut asm = Assembler::new(config, t0);
    let mut fec = crate::fec::Fec::default();
    let mut rest = data;
    let mut now = t0;
    while rest.len() >= 2 {
        let prefix = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(prefix & 0x7fff).min(rest.len() - 2);
        let (d, tail) = rest[2..].split_at(len);
        rest = tail;
        now += Duration::from_millis(50);
        let d = if prefix & 0x8000 != 0 {
            with_crc(d)
        } else {
            d.to_vec()
        };
        let _ = asm.handle_datagram(now, &d);
        asm.handle_timeout(now);
        while let Some(ev) = asm.poll_event() {
            match ev {
                Event::Content { data, .. } => asm.recycle(data),
                // A forged striped block's rebuild may fail, never panic.
                Event::Repair { repair, .. } => {
                    let _ = repair.rebuild(&mut fec, Vec::new(), |buf, _| {
                        buf.fill(0x5a);
                        Ok(())
                    });
                }
                _ => {}
            }
        }
        assert!(
            asm.held_bytes() <= (1 << 20) + (1 << 16),
            "memory bound exceeded"
        );
    }
    asm.shutdown();
    while asm.poll_event().is_some() {}
}
