//! Hostile input at the receiver's port: garbage, forged datagrams and unsafe names.

use std::net::UdpSocket;
use std::time::Duration;

use checkvalve_common::interleave::{InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use checkvalve_tests::{Rig, digest_tree, make_tree};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn random_datagrams_neither_crash_nor_bloat_the_receiver_and_a_transfer_still_succeeds() {
    let rig = Rig::start(None, &[]);
    let pid = rig.receiver.pid().expect("running");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut buf = vec![0u8; 1500];
    // 400,000 datagrams, about 300 MB: far more than the receiver may hold (its socket-thread
    // queue is bounded to 64K datagrams, about 95 MiB), so retaining them would show.
    for _ in 0..40 {
        for i in 0..10_000 {
            let len = rng.random_range(0..1500);
            rng.fill(&mut buf[..len]);
            // Half of them look like checkvalve datagrams up to the CRC.
            if i % 2 == 0 && len >= 8 {
                buf[..6].copy_from_slice(b"CVLV\x01\x01");
            }
            let _ = sock.send_to(&buf[..len], &rig.receiver_addr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_end = rss_kib(pid);
    eprintln!("receiver RSS after the flood: {rss_end} KiB");
    assert!(
        rss_end < 160 * 1024,
        "receiver memory reached {rss_end} KiB under garbage"
    );
    assert!(rig.receiver.pid().is_some());

    let src = rig.dir.path().join("src");
    let tree = make_tree(&src, "after-garbage", 20, 0, 3);
    let expected = digest_tree(&src);
    assert!(rig.send(&[&tree], &[], Duration::from_secs(60)).success());
    let outcome = rig.settle(expected.len(), Duration::from_secs(30));
    assert_eq!(outcome.delivered.len(), expected.len(), "{outcome:?}");
    let log = rig.receiver.log_text();
    assert!(
        log.contains("malformed datagrams rejected"),
        "garbage was not reported"
    );
}

/// Encodes one object whose metadata path is replaced, byte for byte, by `forged` after encoding.
fn forged_object(session: u64, safe: &str, forged: &str) -> Vec<Vec<u8>> {
    assert_eq!(safe.len(), forged.len());
    let head = Head {
        path: safe.into(),
        size: 3,
        mtime_secs: 0,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    };
    let (mut enc, mut head_block) =
        ObjectEncoder::new(session, 0, &head, FecParams::default()).expect("encoder");
    let at = head_block
        .data
        .windows(safe.len())
        .position(|w| w == safe.as_bytes())
        .expect("path in head");
    head_block.data[at..at + forged.len()].copy_from_slice(forged.as_bytes());
    let mut blocks = vec![head_block];
    enc.push(b"pwn", &mut blocks).expect("push");
    enc.finish(&mut blocks).expect("finish");
    let mut inter = Interleaver::new(InterleaveParams::default());
    for b in blocks {
        assert!(inter.push(b).expect("push").is_none());
    }
    inter
        .flush()
        .expect("flush")
        .expect("batch")
        .iter()
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn unsafe_names_are_refused_and_logged() {
    let rig = Rig::start(None, &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let cases = [
        ("aaaaaaaaaaa", "../../escap"),
        ("abc/defghij", "/etc/passwd"),
        ("x/y", "x//"),
    ];
    for (i, (safe, forged)) in cases.iter().enumerate() {
        for d in forged_object(1000 + i as u64, safe, forged) {
            sock.send_to(&d, &rig.receiver_addr).expect("send");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = rig.receiver.log_text();
        if log.matches("unsafe path").count() >= cases.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unsafe names not all refused:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!rig.dir.path().join("escap").exists());
    let published: Vec<_> = digest_tree(&rig.out)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".checkvalve"))
        .collect();
    assert!(published.is_empty(), "{published:?}");
}

/// Unmounts a filesystem when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_costs_only_the_file_that_does_not_fit() {
    let mut mount = None;
    let rig = Rig::start_with(None, &["--min-free", "0"], |out| {
        std::fs::create_dir_all(out).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(out)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            mount = Some(Mount(out.to_path_buf()));
        }
    });
    if mount.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a small tmpfs (run as root)"
        );
        eprintln!("cannot mount tmpfs (not root?): skipped");
        return;
    }
    let src = rig.dir.path().join("src");
    checkvalve_tests::write_file(&src.join("before/a.csv"), 100_000, 1);
    checkvalve_tests::write_file(&src.join("huge/dump.bin"), 12 << 20, 2);
    checkvalve_tests::write_file(&src.join("after/b.csv"), 100_000, 3);
    for (i, part) in ["before", "huge", "after"].iter().enumerate() {
        assert!(
            rig.send(&[&src.join(part)], &[], Duration::from_secs(60))
                .success()
        );
        rig.settle(i + 1, Duration::from_secs(30));
    }
    let outcome = rig.settle(3, Duration::from_secs(30));
    assert!(rig.receiver.pid().is_some(), "receiver died");
    assert_eq!(outcome.lost_named, ["huge/dump.bin"], "{outcome:?}");
    assert!(
        rig.receiver.log_text().contains("not enough disk space")
            || rig.receiver.log_text().contains("No space left")
    );
    for f in ["before/a.csv", "after/b.csv"] {
        assert_eq!(
            std::fs::read(rig.out.join(f)).expect("delivered"),
            std::fs::read(src.join(f)).expect("source"),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_dir(rig.out.join(".checkvalve/tmp"))
            .expect("tmp")
            .count(),
        0
    );
    drop(rig);
}
