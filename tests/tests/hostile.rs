//! Hostile input at the receiver's port: garbage, forged datagrams and unsafe names.

use std::net::UdpSocket;
use std::time::Duration;

use checkvalve_common::interleave::{InterleaveParams, Interleaver};
use checkvalve_common::meta::{Head, ObjectKind};
use checkvalve_common::object::{FecParams, ObjectEncoder};
use checkvalve_tests::{Rig, Status, digest_tree, make_tree};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A memory figure of a process from /proc, in KiB: `VmRSS` (now) or `VmHWM` (peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn random_datagrams_neither_crash_nor_bloat_the_receiver_and_a_transfer_still_succeeds() {
    // Unauthenticated on purpose: the garbage must reach the wire checks (a key refuses it first).
    let rig = Rig::start(None, &["--allow-unauthenticated"]);
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
    let rss_end = status_kib(pid, "VmRSS");
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
    assert_eq!(outcome.total(), expected.len(), "{outcome:?}");
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
    one_group(blocks, InterleaveParams::default())
}

/// The datagrams of `blocks`, interleaved as one group.
fn one_group(
    blocks: Vec<checkvalve_common::object::DataBlock>,
    params: InterleaveParams,
) -> Vec<Vec<u8>> {
    let mut inter = Interleaver::new(params);
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
    // Unauthenticated on purpose: the forged objects must reach the name checks.
    let rig = Rig::start(None, &["--allow-unauthenticated"]);
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
    // `out/../../escap` is two levels above the output folder: the parent of the scratch folder.
    let target = rig.out.join("../../escap");
    assert_eq!(
        target.parent().and_then(|p| p.canonicalize().ok()),
        rig.dir.path().parent().and_then(|p| p.canonicalize().ok())
    );
    assert!(!target.exists(), "escaped to {}", target.display());
    assert!(!std::path::Path::new("/etc/passwd.checkvalve").exists());
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
#[cfg_attr(
    not(can_mount),
    ignore = "needs root to mount a small tmpfs (always run under CI)"
)]
fn a_full_disk_costs_only_the_files_that_do_not_fit() {
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
    assert!(mount.is_some(), "cannot mount a tmpfs: run as root");
    let src = rig.dir.path().join("src");
    checkvalve_tests::write_file(&src.join("before/a.csv"), 100_000, 1);
    checkvalve_tests::write_file(&src.join("huge/dump.bin"), 12 << 20, 2);
    // Two files that fit one at a time but not together: the second is refused up front, from
    // the space the first has reserved, instead of failing half-written.
    checkvalve_tests::write_file(&src.join("pair/one.bin"), 5 << 20, 4);
    checkvalve_tests::write_file(&src.join("pair/two.bin"), 5 << 20, 5);
    checkvalve_tests::write_file(&src.join("after/b.csv"), 100_000, 3);
    let mut expected = 0;
    for (part, files) in [("before", 1), ("huge", 1), ("pair", 2), ("after", 1)] {
        assert!(
            rig.send(&[&src.join(part)], &[], Duration::from_secs(60))
                .success()
        );
        expected += files;
        rig.settle(expected, Duration::from_secs(30));
        if part == "pair" {
            // Make room again for what follows.
            for f in ["pair/one.bin", "pair/two.bin"] {
                let _ = std::fs::remove_file(rig.out.join(f));
            }
        }
    }
    let outcome = rig.settle(expected, Duration::from_secs(30));
    assert!(rig.receiver.pid().is_some(), "receiver died");
    assert_eq!(outcome.lost_named.len(), 2, "{outcome:?}");
    assert!(outcome.lost_named.contains(&"huge/dump.bin".to_string()));
    let reasons: Vec<&str> = outcome
        .records
        .iter()
        .filter(|r| r.status == Status::Lost)
        .filter_map(|r| r.reason.as_deref())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("not enough disk space")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("in progress")),
        "{reasons:?}"
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

#[test]
fn a_flood_of_large_forged_shards_stays_within_the_memory_bound() {
    const MAX_PENDING_MIB: u64 = 64;
    // The stated constant: binary, thread stacks, buffers of fixed size, allocator slack.
    const OVERHEAD_MIB: u64 = 32;
    // Unauthenticated on purpose: the forged shards must reach the assembler.
    let rig = Rig::start(
        None,
        &[
            "--max-pending",
            "64M",
            "--object-timeout",
            "2s",
            "--allow-unauthenticated",
        ],
    );
    let pid = rig.receiver.pid().expect("running");
    let senders: Vec<_> = (0..2u64)
        .map(|t| {
            let to = rig.receiver_addr.clone();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
                let payload = vec![0xA5u8; 60_000];
                let start = std::time::Instant::now();
                let mut i = 0u64;
                // Full loopback speed for three seconds: well-formed shards of large blocks
                // that never decode, from many sessions and objects.
                while start.elapsed() < Duration::from_secs(3) {
                    let h = checkvalve_common::wire::ShardHeader {
                        session: 1 + (i % 40) + t * 1000,
                        object: i % 997,
                        block: (i % 5000) as u32 + 1,
                        shard: 200,
                        data_shards: 200,
                        parity_shards: 40,
                        shard_len: 60_000,
                        head_len: 100,
                        content_len: 1 << 40,
                        stripe: 0,
                    };
                    let mut d = Vec::with_capacity(60_100);
                    h.emit(&payload, &mut d);
                    let _ = sock.send_to(&d, &to);
                    i += 1;
                }
                i
            })
        })
        .collect();
    let sent: u64 = senders.into_iter().map(|t| t.join().expect("flood")).sum();
    std::thread::sleep(Duration::from_millis(500));
    let peak = status_kib(pid, "VmHWM");
    let log = rig.receiver.log_text();
    eprintln!(
        "{sent} forged 60 kB datagrams; receiver peak RSS {peak} KiB; {}",
        log.lines().rfind(|l| l.contains(" stats ")).unwrap_or("")
    );
    assert!(
        peak <= (MAX_PENDING_MIB + OVERHEAD_MIB) * 1024,
        "peak RSS {peak} KiB above --max-pending {MAX_PENDING_MIB} MiB + {OVERHEAD_MIB} MiB"
    );
    // Still receiving, once the forged sessions have gone idle (a new sender is refused while
    // every session slot holds a session in its first object timeout: see the operator guide).
    std::thread::sleep(Duration::from_secs(3));
    let src = rig.dir.path().join("src");
    checkvalve_tests::write_file(&src.join("after-flood.csv"), 50_000, 9);
    assert!(
        rig.send(
            &[&src.join("after-flood.csv")],
            &[],
            Duration::from_secs(60)
        )
        .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rig.outcome().delivered.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = rig.outcome();
    assert_eq!(outcome.delivered, ["after-flood.csv"], "{outcome:?}");
    // The forged objects were recorded in aggregate, a handful of records, not one per object.
    assert!(
        outcome.records.len() < 200,
        "{} records",
        outcome.records.len()
    );
}

#[test]
fn a_flood_of_forged_sessions_does_not_flood_the_log_or_the_manifest() {
    // Unauthenticated on purpose: the forged sessions must reach the assembler.
    let rig = Rig::start(None, &["--object-timeout", "1s", "--allow-unauthenticated"]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // One forged object per fresh session (a whole, decodable head and content), and a forged
    // heartbeat per fresh session: 200,000 datagrams.
    let template = forged_object(1, "forged.txt", "forged.txt");
    for i in 0..100_000u64 {
        let session: u64 = rng.random::<u64>() | 1;
        let d = &template[(i as usize) % template.len()];
        let mut d = d.clone();
        d[8..16].copy_from_slice(&session.to_be_bytes());
        let n = d.len() - 4;
        let crc = crc32fast::hash(&d[..n]);
        d[n..].copy_from_slice(&crc.to_be_bytes());
        let _ = sock.send_to(&d, &rig.receiver_addr);
        let hb = checkvalve_common::wire::Heartbeat {
            session: rng.random::<u64>() | 1,
            seq: 0,
            datagrams_sent: 0,
            objects_sent: rng.random_range(0..1000),
            interval_ms: 1000,
        };
        let _ = sock.send_to(&hb.to_bytes(), &rig.receiver_addr);
        if i % 2000 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Let every forged object and gap time out and be recorded.
    std::thread::sleep(Duration::from_secs(4));
    let log = rig.receiver.log_text();
    let manifest: u64 = checkvalve_tests::folder_bytes(&rig.manifest_path());
    eprintln!(
        "{} log lines, {} bytes of manifest, {} new-session lines",
        log.lines().count(),
        manifest,
        log.matches("new sender session").count()
    );
    assert!(
        log.lines().count() < 500,
        "log flooded: {} lines",
        log.lines().count()
    );
    assert!(log.matches("new sender session").count() <= 20);
    assert!(manifest < 100_000, "manifest flooded: {manifest} bytes");
    assert!(rig.receiver.pid().is_some());
}

#[test]
fn datagrams_the_kernel_drops_while_the_receiver_is_stopped_are_counted() {
    // Unauthenticated on purpose: the datagrams are the test's own, unkeyed.
    let rig = Rig::start(None, &["--rcvbuf", "256K", "--allow-unauthenticated"]);
    let pid = nix::unistd::Pid::from_raw(rig.receiver.pid().expect("running") as i32);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagram = [0x5Au8; 1000];
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop");
    // 20 MB at a stopped receiver with a 256 KiB buffer: nearly all of it is dropped.
    for _ in 0..20_000 {
        let _ = sock.send_to(&datagram, &rig.receiver_addr);
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("continue");
    let counted = |log: &str| -> Option<u64> {
        let at = log.rfind("kernel_overflows=")?;
        log[at + "kernel_overflows=".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    // A datagram after the flood carries the socket's drop count; the stats line reports it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        let _ = sock.send_to(&datagram, &rig.receiver_addr);
        seen = counted(&rig.receiver.log_text());
        if seen.is_some_and(|n| n >= 10_000) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        seen.is_some_and(|n| (10_000..=20_000).contains(&n)),
        "stats said kernel_overflows={seen:?} after 20,000 datagrams at a stopped receiver"
    );
}

/// The datagrams of object `object` of `session`: a whole, decodable file `path` of 1 byte.
fn tiny_file(session: u64, object: u64, path: &str) -> Vec<Vec<u8>> {
    let head = Head {
        path: path.into(),
        size: 1,
        mtime_secs: 0,
        mtime_nanos: 0,
        kind: ObjectKind::File,
    };
    let fec = FecParams {
        data_shards: 1,
        parity_shards: 0,
        shard_len: 64,
    };
    let (mut enc, head_block) = ObjectEncoder::new(session, object, &head, fec).expect("encoder");
    let mut blocks = vec![head_block];
    enc.push(b"x", &mut blocks).expect("push");
    enc.finish(&mut blocks).expect("finish");
    one_group(
        blocks,
        InterleaveParams {
            depth: 64,
            min_span: 0,
            stripe_bytes: 0,
        },
    )
}

/// Files open in process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Unauthenticated mode (the one a flood can reach), ten seconds of tiny, complete, distinct
/// forged files from 16 sessions as fast as a socket sends them: the receiver stays up, holds
/// far fewer open files than its limit, logs a few hundred ERROR/WARN lines at most and grows
/// its manifest by a few KB/s at most beyond the files it really publishes, and a transfer after
/// the flood arrives.
#[test]
fn ten_seconds_of_tiny_forged_files_from_sixteen_sessions_stay_bounded() {
    let rig = Rig::start(None, &["--allow-unauthenticated"]);
    let pid = rig.receiver.pid().expect("running");
    let sessions: Vec<u64> = (0..16u64)
        .map(|i| 0x6000_0000_0000_0000 | (i << 8))
        .collect();
    // Prepared before the clock starts: 16 sessions of 3,000 files each, sent round robin.
    let mut flood: Vec<Vec<u8>> = Vec::new();
    for object in 0..3_000u64 {
        for &s in &sessions {
            flood.extend(tiny_file(s, object, &format!("flood/{s:x}/{object}.txt")));
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(open_files(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    'flood: while start.elapsed() < Duration::from_secs(10) {
        for d in &flood {
            let _ = sock.send_to(d, &rig.receiver_addr);
            sent += 1;
            if sent.is_multiple_of(1024) && start.elapsed() >= Duration::from_secs(10) {
                break 'flood;
            }
        }
    }
    // Let what is queued drain (the receiver has taken in every datagram it will and published
    // what it could: its datagram count and its manifest stand still for two seconds), then a
    // real transfer.
    let state = rig.out.join(".checkvalve");
    let taken = || {
        let records: u64 = checkvalve_tests::folder_bytes(&rig.manifest_path());
        let datagrams = checkvalve_formats::live::State::read(&state).map_or(0, |s| s.datagrams);
        (datagrams, records)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = taken();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = taken();
        if now == last || std::time::Instant::now() > deadline {
            break;
        }
        last = now;
    }
    assert!(rig.receiver.pid().is_some(), "the receiver died");
    let src = rig.dir.path().join("after");
    let tree = make_tree(&src, "after", 10, 100_000, 3);
    assert!(
        rig.send(&[&tree], &["--rate", "50M"], Duration::from_secs(60))
            .success()
    );
    let expected = digest_tree(&src);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got: Vec<_> = digest_tree(&rig.out)
            .into_iter()
            .filter(|(p, _)| p.starts_with("after/"))
            .collect();
        if got.len() >= expected.len() || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let log = rig.receiver.log_text();
    let loud = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .count();
    let manifest: u64 = checkvalve_tests::folder_bytes(&rig.manifest_path());
    let published = digest_tree(&rig.out.join("flood")).len() as u64;
    eprintln!(
        "{sent} datagrams sent; peak {peak} open files; {loud} ERROR/WARN lines of {}; {manifest} bytes of manifest for {published} files published",
        log.lines().count()
    );
    assert_eq!(got.len(), expected.len(), "the transfer after the flood");
    assert!(peak <= 1_100, "{peak} files open at once");
    assert!(
        loud <= 300,
        "{loud} ERROR/WARN lines:\n{}",
        checkvalve_tests::tail(&rig.receiver.log)
    );
    // A record per file really published (about 430 bytes with these paths), and a few KB/s
    // for the rest.
    assert!(
        manifest <= published * 500 + 13 * 5_000,
        "{manifest} bytes of manifest"
    );
}

/// Unauthenticated mode, one forged session sending parity shards of ever new blocks (never
/// completing, each holding a block's buffer until it times out) at 20,000 datagrams/s, 28 MB/s,
/// as long as a real 20 MB file takes to cross beside it: the file arrives, and the forger held at
/// most its fair share of the memory (§7).
#[test]
fn a_greedy_forged_session_beside_a_real_transfer_takes_only_its_share() {
    let rig = Rig::start(None, &["--allow-unauthenticated"]);
    // A parity shard of block 1 of a 300 KB object, renumbered into a new object each time.
    let template = {
        let head = Head {
            path: "hog.bin".into(),
            size: 300_000,
            mtime_secs: 0,
            mtime_nanos: 0,
            kind: ObjectKind::File,
        };
        let (mut enc, head_block) =
            ObjectEncoder::new(0x6666, 0, &head, FecParams::default()).expect("encoder");
        let mut blocks = vec![head_block];
        enc.push(&[7u8; 300_000], &mut blocks).expect("push");
        enc.finish(&mut blocks).expect("finish");
        one_group(blocks, InterleaveParams::default())
            .into_iter()
            .find(|d| d[24..28] == 1u32.to_be_bytes() && d[28] >= 64)
            .expect("a parity shard of block 1")
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, to) = (stop.clone(), rig.receiver_addr.clone());
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut d = template;
            let start = std::time::Instant::now();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                d[16..24].copy_from_slice(&sent.to_be_bytes());
                let n = d.len() - 4;
                let crc = crc32fast::hash(&d[..n]);
                d[n..].copy_from_slice(&crc.to_be_bytes());
                let _ = sock.send_to(&d, &to);
                sent += 1;
                // 20,000 a second, in bursts of 200.
                if sent.is_multiple_of(200) {
                    let due = Duration::from_micros(sent * 50);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let src = rig.dir.path().join("big.bin");
    checkvalve_tests::write_file(&src, 20 << 20, 9);
    assert!(
        rig.send(&[&src], &["--rate", "100M"], Duration::from_secs(120))
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let o = rig.outcome();
        if o.delivered
            .iter()
            .chain(&o.lost_named)
            .any(|p| p == "big.bin")
            || std::time::Instant::now() > deadline
        {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forged = flood.join().expect("flood");
    let log = rig.receiver.log_text();
    let last_stats = log
        .lines()
        .rev()
        .find(|l| l.contains(" stats "))
        .unwrap_or("");
    eprintln!("{forged} forged datagrams; {last_stats}");
    assert_eq!(
        outcome.delivered,
        ["big.bin"],
        "lost: {:?}\n{}",
        outcome.lost_named,
        checkvalve_tests::tail(&rig.receiver.log)
    );
}
