//! Authenticated datagrams end to end: with a key, forged, unauthenticated and replayed datagrams
//! are refused and counted while a real transfer arrives intact; with `--encrypt`, no plaintext
//! crosses the link.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checkvalve_common::wire::{Heartbeat, ShardHeader};
use checkvalve_tests::{Rig, bin, digest_tree, keygen, make_tree, write_file};

/// A receiver holding `key`, writing to `out`: the process and the address it listens on.
fn keyed_receiver(
    dir: &Path,
    tag: &str,
    key: &Path,
    out: &Path,
) -> (checkvalve_tests::Proc, String) {
    keyed_receiver_at(dir, tag, key, out, "127.0.0.1:0")
}

/// Like [`keyed_receiver`], bound to `bind`.
fn keyed_receiver_at(
    dir: &Path,
    tag: &str,
    key: &Path,
    out: &Path,
    bind: &str,
) -> (checkvalve_tests::Proc, String) {
    let receiver = checkvalve_tests::Proc::start(
        dir,
        tag,
        &bin("checkvalve-receive"),
        &[
            "--bind".into(),
            bind.into(),
            "--out".into(),
            out.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--stats-interval".into(),
            "1s".into(),
        ],
    );
    let addr = checkvalve_tests::bound_addr(&receiver, " receiving", Duration::from_secs(20));
    (receiver, addr)
}

/// A key numbered `id` and a receiver holding it, writing to its own folder: the key, the folder,
/// the receiver and the address it listens on.
fn keyed_setup(
    dir: &Path,
    id: u32,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    checkvalve_tests::Proc,
    String,
) {
    let key = keygen(dir, id);
    let out = dir.join("keyed-out");
    let (receiver, raddr) = keyed_receiver(dir, "keyed-receiver", &key, &out);
    (key, out, receiver, raddr)
}

/// Every record of the receiver's manifest, in the order written (one file per day).
fn manifest_records(out: &Path) -> Vec<String> {
    let mut days: Vec<_> = std::fs::read_dir(out.join(".checkvalve/manifest"))
        .expect("manifest")
        .flatten()
        .map(|e| e.path())
        .collect();
    days.sort();
    days.iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A relay in front of the receiver that keeps a copy of every datagram.
struct Tap {
    addr: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn start(to: &str) -> Tap {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr").to_string();
        let (seen, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (s2, st2, to) = (Arc::clone(&seen), Arc::clone(&stop), to.to_owned());
        let thread = std::thread::spawn(move || {
            let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut buf = vec![0u8; 65_536];
            while !st2.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    let _ = out.send_to(&buf[..n], &to);
                    s2.lock().expect("lock").push(buf[..n].to_vec());
                }
            }
        });
        Tap {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn taken(&mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

/// Starts a sender with `key` towards `to`, sending `path` (at 100 Mbit/s when `paced`).
fn keyed_sender(
    dir: &Path,
    tag: &str,
    to: &str,
    key: &Path,
    path: &Path,
    paced: bool,
) -> checkvalve_tests::Proc {
    let mut args = vec!["--to".to_string(), to.to_string()];
    if paced {
        args.extend(["--rate".to_string(), "100M".to_string()]);
    }
    args.extend([
        "--key".to_string(),
        key.display().to_string(),
        path.display().to_string(),
    ]);
    checkvalve_tests::Proc::start(dir, tag, &bin("checkvalve-send"), &args)
}

/// The receiver's live state as last written (all zero before the first).
fn live(out: &Path) -> checkvalve_formats::live::State {
    checkvalve_formats::live::State::read(&out.join(".checkvalve")).unwrap_or_default()
}

fn refused(out: &Path) -> u64 {
    live(out).refused_auth
}

/// Datagrams the receiver dropped and counted: refused by authentication, or shed unread while it
/// was behind (parity only, spread out: counted as `dropped_behind`).
fn dropped_and_counted(out: &Path) -> u64 {
    refused(out) + live(out).dropped_behind
}

fn wait_refused(out: &Path, at_least: u64) -> u64 {
    wait_counted(out, at_least, refused)
}

fn wait_counted(out: &Path, at_least: u64, count: fn(&Path) -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = count(out);
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Well-formed plain datagrams of a forged session, valid CRC: accepted by a receiver without keys.
fn forged_plain(i: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if i.is_multiple_of(10) {
        out = Heartbeat {
            session: 0xbad0_0000 + i,
            seq: i,
            datagrams_sent: i,
            objects_sent: 1,
            interval_ms: 1000,
        }
        .to_bytes();
    } else {
        ShardHeader {
            session: 0xbad0_0000 + (i % 7),
            object: i % 5,
            block: 0,
            shard: (i % 4) as u8,
            data_shards: 4,
            parity_shards: 2,
            shard_len: 32,
            head_len: 20,
            content_len: 10,
            stripe: 0,
        }
        .emit(&[i as u8; 32], &mut out);
    }
    out
}

/// A datagram claiming authentication (key id 1) with a random tag and a valid CRC.
fn forged_authenticated(i: u64) -> Vec<u8> {
    let mut d = forged_plain(i);
    d.truncate(d.len() - 4);
    d[6..8].copy_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&i.to_be_bytes());
    d.extend_from_slice(&rand::random::<[u8; 16]>());
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_be_bytes());
    d
}

#[test]
fn with_a_key_forged_unauthenticated_and_replayed_datagrams_are_all_refused_during_a_transfer() {
    let rig = Rig::start(None, &[]);
    // A receiver of the test's own, with its own key, on its own folder.
    let dir = rig.dir.path();
    let (key, out, receiver, raddr) = keyed_setup(dir, 1);
    let mut tap = Tap::start(&raddr);
    let src = make_tree(dir, "keyed", 12, 300_000, 77);
    // The flood runs during the transfer: 50,000 forged datagrams.
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let (raddr, flooding) = (raddr.clone(), Arc::clone(&flooding));
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut sent = 0u64;
            while sent < 50_000 {
                let d = if sent.is_multiple_of(2) {
                    forged_plain(sent)
                } else {
                    forged_authenticated(sent)
                };
                let _ = sock.send_to(&d, &raddr);
                sent += 1;
                if sent.is_multiple_of(500) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            flooding.store(false, Ordering::Relaxed);
            sent
        })
    };
    let mut sender = keyed_sender(dir, "sender", &tap.addr, &key, &src, true);
    assert!(sender.wait(Duration::from_secs(60)).success());
    let forged = flood.join().expect("flood");
    assert!(!flooding.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(2));
    let sent: std::collections::BTreeMap<_, _> = digest_tree(&src).into_iter().collect();
    let got: std::collections::BTreeMap<_, _> =
        digest_tree(&out.join("keyed")).into_iter().collect();
    assert!(
        got == sent,
        "the transfer during the flood did not arrive byte-identical"
    );
    assert_eq!(
        wait_refused(&out, forged),
        forged,
        "every forged datagram refused and counted"
    );
    // Replays: the whole captured session again, 50,000 datagrams in all, after a new session
    // has started (so the old one is refused as old, not only as seen).
    let captured = tap.taken();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut sender2 = keyed_sender(dir, "sender-2", &raddr, &key, &src.join("edges"), false);
    let _ = sender2.wait(Duration::from_secs(30));
    let shared = |out: &Path| -> Vec<(String, [u8; 32])> {
        digest_tree(out)
            .into_iter()
            .filter(|(p, _)| !p.starts_with(".checkvalve"))
            .collect()
    };
    let before = shared(&out);
    let records_before = std::fs::read_dir(out.join(".checkvalve/manifest"))
        .expect("manifest")
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum::<usize>();
    let base = dropped_and_counted(&out);
    let mut replayed = 0u64;
    while replayed < 50_000 {
        for d in &captured {
            let _ = sock.send_to(d, &raddr);
            replayed += 1;
            // About 100,000 a second: a flood, below what overflows the socket buffer unread.
            if replayed.is_multiple_of(200) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if replayed == 50_000 {
                break;
            }
        }
    }
    assert_eq!(
        wait_counted(&out, base + replayed, dropped_and_counted) - base,
        replayed,
        "every replayed datagram refused and counted"
    );
    assert_eq!(shared(&out), before, "replays changed the share");
    let records_after = std::fs::read_dir(out.join(".checkvalve/manifest"))
        .expect("manifest")
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum::<usize>();
    // Only loss/link records may follow (the receiver's periodic ones), never a file outcome.
    let tail: Vec<String> = manifest_records(&out)
        .into_iter()
        .skip(records_before)
        .collect();
    assert!(
        tail.iter().all(
            |l| !l.contains("\"status\":\"delivered\"") && !l.contains("\"status\":\"repeat\"")
        ),
        "replays produced outcomes: {tail:?} ({records_before} -> {records_after})"
    );
    let mut receiver = receiver;
    assert!(receiver.stop().success());
}

#[test]
fn encrypted_payloads_never_cross_the_link_in_the_clear() {
    let rig = Rig::start(None, &[]);
    let dir = rig.dir.path();
    let key = keygen(dir, 9);
    let marker = b"CONFIDENTIAL-PUMP-7-SETPOINTS";
    let src = dir.join("secret");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("setpoints.txt"), marker.repeat(2_000)).expect("write");
    write_file(&src.join("other.bin"), 100_000, 5);
    let out_dir = |tag: &str| dir.join(format!("out-{tag}"));
    for (tag, encrypt) in [("plain", false), ("encrypted", true)] {
        let out = out_dir(tag);
        let (mut receiver, raddr) = keyed_receiver(dir, &format!("receiver-{tag}"), &key, &out);
        let mut tap = Tap::start(&raddr);
        let mut args = vec![
            "--to".to_string(),
            tap.addr.clone(),
            "--rate".into(),
            "50M".into(),
            "--key".into(),
            key.display().to_string(),
        ];
        if encrypt {
            args.push("--encrypt".into());
        }
        args.push(src.display().to_string());
        let mut sender = checkvalve_tests::Proc::start(
            dir,
            &format!("sender-{tag}"),
            &bin("checkvalve-send"),
            &args,
        );
        assert!(sender.wait(Duration::from_secs(60)).success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !out.join("secret/setpoints.txt").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            std::fs::read(out.join("secret/setpoints.txt")).expect("delivered"),
            marker.repeat(2_000),
            "{tag}"
        );
        let link: Vec<u8> = tap.taken().concat();
        let visible = link.windows(marker.len()).any(|w| w == marker);
        assert_eq!(
            visible, !encrypt,
            "{tag}: marker visible on the link = {visible}"
        );
        assert!(receiver.stop().success());
    }
}

/// VmHWM (peak resident memory) of `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn thirty_seconds_of_flood_from_many_sessions_cost_a_keyed_receiver_nothing() {
    const MAX_PENDING_MIB: u64 = 48;
    const OVERHEAD_MIB: u64 = 32;
    let rig = Rig::start(None, &[]);
    let dir = rig.dir.path();
    let (key, out, mut receiver, raddr) = keyed_setup(dir, 3);
    let pid = receiver.pid().expect("running");
    // Two threads at full loopback speed for 30 s: random bytes, and well-formed datagrams (plain
    // and claiming authentication) from thousands of session ids.
    let flood: Vec<_> = (0..2u64)
        .map(|t| {
            let to = raddr.clone();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
                let start = Instant::now();
                let mut i = t << 40;
                while start.elapsed() < Duration::from_secs(30) {
                    let d = match i % 3 {
                        0 => (0..(i % 1400) as usize + 20)
                            .map(|_| rand::random::<u8>())
                            .collect(),
                        1 => forged_plain(i),
                        _ => forged_authenticated(i),
                    };
                    let _ = sock.send_to(&d, &to);
                    i += 1;
                }
                i - (t << 40)
            })
        })
        .collect();
    // A keyed spool service, started before the flood and fed in the middle of it, as a plant's
    // is: every file it is given during the flood arrives.
    let spool = dir.join("spool");
    let cfg = dir.join("send.toml");
    std::fs::write(
        &cfg,
        format!(
            "to = \"{raddr}\"\nkey = \"{}\"\nrate = \"100M\"\nsettle = \"1s\"\n[[channel]]\nname = \"during\"\nspool = \"{}\"\n",
            key.display(),
            spool.display()
        ),
    )
    .expect("config");
    let mut service = checkvalve_tests::Proc::start(
        dir,
        "sender",
        &bin("checkvalve-send"),
        &["--config".into(), cfg.display().to_string()],
    );
    std::thread::sleep(Duration::from_secs(5));
    let src = make_tree(dir, "staged", 8, 200_000, 91);
    let sent: std::collections::BTreeMap<_, _> = digest_tree(&src).into_iter().collect();
    std::fs::rename(&src, spool.join("staged")).expect("into the spool");
    let deadline = Instant::now() + Duration::from_secs(25);
    let got = loop {
        let got: std::collections::BTreeMap<_, _> = digest_tree(&out.join("during/staged"))
            .into_iter()
            .collect();
        if got == sent || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let forged: u64 = flood.into_iter().map(|t| t.join().expect("flood")).sum();
    assert!(receiver.pid().is_some(), "the receiver died");
    assert!(service.stop().success());
    assert!(
        got == sent,
        "the files given to the spool service during the flood did not all arrive byte-identical: {} of {}",
        got.len(),
        sent.len()
    );
    let peak = peak_kib(pid);
    assert!(
        peak <= (MAX_PENDING_MIB + OVERHEAD_MIB) * 1024,
        "peak RSS {peak} KiB"
    );
    // Nothing written outside the share and state; log and manifest stay small.
    let outside: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "during" && n != ".checkvalve")
        .collect();
    assert!(
        outside.is_empty(),
        "unexpected entries in the share: {outside:?}"
    );
    let log = receiver.log_text();
    let manifest = checkvalve_tests::folder_bytes(&out.join(".checkvalve/manifest"));
    assert!(manifest > 0, "no manifest");
    eprintln!(
        "{forged} flood datagrams; refused {}; peak RSS {peak} KiB; {} log lines; manifest {manifest} bytes",
        refused(&out),
        log.lines().count()
    );
    assert!(log.lines().count() < 500, "log flooded");
    assert!(manifest < 50_000, "manifest flooded: {manifest} bytes");
    assert!(receiver.stop().success());
}

#[test]
fn a_restarted_receiver_refuses_replays_of_what_it_accepted_before_it_stopped() {
    let rig = Rig::start(None, &[]);
    let dir = rig.dir.path();
    let (key, out, mut receiver, raddr) = keyed_setup(dir, 1);
    let mut tap = Tap::start(&raddr);
    let src = make_tree(dir, "kept", 6, 200_000, 78);
    let mut sender = keyed_sender(dir, "sender", &tap.addr, &key, &src, true);
    assert!(sender.wait(Duration::from_secs(60)).success());
    let sent: std::collections::BTreeMap<_, _> = digest_tree(&src).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got: std::collections::BTreeMap<_, _> =
            digest_tree(&out.join("kept")).into_iter().collect();
        if got == sent || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(got == sent, "the transfer did not arrive byte-identical");
    let captured = tap.taken();
    // The replay state is saved off the receive loop; a clean stop waits for the last save.
    assert!(receiver.stop().success());
    let (mut again, raddr) = keyed_receiver(dir, "keyed-receiver-2", &key, &out);
    let outcomes = |out: &Path| -> usize {
        manifest_records(out)
            .iter()
            .filter(|l| {
                l.contains("\"status\":\"delivered\"") || l.contains("\"status\":\"repeat\"")
            })
            .count()
    };
    let before = outcomes(&out);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for (i, d) in captured.iter().enumerate() {
        let _ = sock.send_to(d, &raddr);
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let replayed = captured.len() as u64;
    assert!(replayed > 500, "only {replayed} datagrams captured");
    assert_eq!(
        wait_counted(&out, replayed, dropped_and_counted),
        replayed,
        "every datagram of the session accepted before the restart refused after it"
    );
    assert_eq!(
        outcomes(&out),
        before,
        "a replay after the restart produced an outcome"
    );
    assert!(again.stop().success());
}

/// A keyed receiver stopped twice during a paced transfer of 40 files (SIGTERM, then SIGKILL) and
/// started again at once on the same port: it loses at most the files in flight at each stop, and
/// refuses nothing the sender sends after a restart. Counters are in send order per space
/// (objects' datagrams and heartbeats apart): were heartbeats counted with the datagrams, whose
/// counters are taken as they are encoded, ahead of the link, a heartbeat saved before the stop
/// would lift the floor above thousands of datagrams still queued in the sender.
#[test]
fn a_keyed_receiver_restarted_during_a_transfer_refuses_nothing_sent_after_the_restart() {
    let rig = Rig::start(None, &[]);
    let dir = rig.dir.path();
    let (key, out, receiver, raddr) = keyed_setup(dir, 1);
    // Files of 1 MB: an interleaving group (64 blocks of 64 shards) spans about six of them.
    let src = dir.join("restart");
    for i in 0..40 {
        write_file(&src.join(format!("f{i:02}.bin")), 1_000_000, 4100 + i);
    }
    let files = digest_tree(&src);
    let mut sender = checkvalve_tests::Proc::start(
        dir,
        "sender",
        &bin("checkvalve-send"),
        &[
            "--to".into(),
            raddr.clone(),
            "--rate".into(),
            "40M".into(),
            "--key".into(),
            key.display().to_string(),
            src.display().to_string(),
        ],
    );
    let start = |tag: &str| keyed_receiver_at(dir, tag, &key, &out, &raddr).0;
    let mut receiver = receiver;
    std::thread::sleep(Duration::from_millis(3000));
    assert!(receiver.stop().success(), "a clean stop");
    let mut second = start("receiver-2");
    // Long enough after the restart for the queued datagrams to have crossed, and for live.json.
    std::thread::sleep(Duration::from_millis(2500));
    let refused_second = refused(&out);
    let pid = second.pid().expect("running");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = second.wait(Duration::from_secs(5));
    let mut third = start("receiver-3");
    assert!(
        sender.wait(Duration::from_secs(120)).success(),
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    let manifest = out.join(".checkvalve/manifest");
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let o = checkvalve_tests::Outcome::read(&manifest);
        if o.total() >= files.len() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let refused_third = refused(&out);
    assert!(third.stop().success());
    assert_eq!(
        (refused_second, refused_third),
        (0, 0),
        "datagrams sent after a restart refused:\n{}",
        checkvalve_tests::tail(&third.log)
    );
    // Whatever was delivered is intact.
    let got: std::collections::BTreeMap<_, _> =
        digest_tree(&out.join("restart")).into_iter().collect();
    for (path, digest) in &files {
        if let Some(d) = got.get(path) {
            assert_eq!(d, digest, "{path} delivered altered");
        }
    }
    // Each stop costs the files in flight at that moment: those of the group being sent (its
    // blocks' shards are spread over it) and one either side.
    let lost = files.len() - outcome.delivered.len();
    eprintln!(
        "delivered {}, lost by name {:?}, without a name {}",
        outcome.delivered.len(),
        outcome.lost_named,
        outcome.lost_unnamed
    );
    assert!(
        lost <= 8,
        "{lost} of {} files lost over two restarts; delivered {:?}",
        files.len(),
        outcome.delivered
    );
}
