//! Secure by default: neither program starts without a key unless the operator says
//! `--allow-unauthenticated`, and a receiver that runs without one says so wherever it reports.

use std::time::Duration;

use checkvalve_tests::{Proc, Rig, bin, write_file};

/// Runs `program` with `args` and returns its exit code and log (it must exit by itself).
fn refused(
    dir: &std::path::Path,
    tag: &str,
    program: &str,
    args: &[String],
) -> (Option<i32>, String) {
    let mut p = Proc::start(dir, tag, &bin(program), args);
    let status = p.wait(Duration::from_secs(20));
    (status.code(), p.log_text())
}

/// Writes `text` to `file` and runs `program --config file --check`: it must fail (exit 2) saying
/// `expect`.
fn check_fails(dir: &std::path::Path, program: &str, file: &str, text: &str, expect: &str) {
    let cfg = dir.join(file);
    std::fs::write(&cfg, text).expect("config");
    let (code, log) = refused(
        dir,
        &format!("{file}-check"),
        program,
        &strings(&["--config", &cfg.display().to_string(), "--check"]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(expect), "{log}");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn without_a_key_neither_program_starts_and_both_name_the_two_ways_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("out");
    let src = dir.path().join("a.csv");
    write_file(&src, 1_000, 3);
    let both = |log: &str| log.contains("--key") && log.contains("--allow-unauthenticated");
    let (code, log) = refused(
        dir.path(),
        "receiver",
        "checkvalve-receive",
        &strings(&["--bind", "127.0.0.1:0", "--out", &out.display().to_string()]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(both(&log), "{log}");
    assert!(
        !out.join(".checkvalve").exists(),
        "a refused receiver touched the share"
    );
    let (code, log) = refused(
        dir.path(),
        "sender",
        "checkvalve-send",
        &strings(&["--to", "127.0.0.1:9", &src.display().to_string()]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(both(&log), "{log}");
    // The units' preflight fails the same way for a configuration without a key.
    let receive = format!("bind = \"127.0.0.1:0\"\nout = \"{}\"\n", out.display());
    check_fails(
        dir.path(),
        "checkvalve-receive",
        "receive.toml",
        &receive,
        "allow_unauthenticated",
    );
    let spool = dir.path().join("spool");
    let send = format!(
        "to = \"127.0.0.1:9\"\n[[channel]]\nname = \"a\"\nspool = \"{}\"\n",
        spool.display()
    );
    check_fails(
        dir.path(),
        "checkvalve-send",
        "send.toml",
        &send,
        "allow_unauthenticated",
    );
}

#[test]
fn told_to_run_unauthenticated_the_pair_delivers_and_the_receiver_says_it_at_every_turn() {
    let rig = Rig::start(None, &["--allow-unauthenticated"]);
    assert!(rig.key.is_none());
    let src = rig.dir.path().join("a.csv");
    write_file(&src, 50_000, 4);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    let outcome = rig.settle(1, Duration::from_secs(20));
    assert_eq!(outcome.delivered, ["a.csv"], "{outcome:?}");
    // The statistics line (every second here) repeats it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = rig.receiver.log_text();
        if log.matches("datagrams are NOT authenticated").count() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let live =
        checkvalve_formats::live::State::read(&rig.out.join(".checkvalve")).expect("live state");
    assert!(!live.authenticated);
}

#[test]
fn a_keyed_rig_says_its_datagrams_are_authenticated() {
    let rig = Rig::start(None, &[]);
    assert!(rig.key.is_some());
    let src = rig.dir.path().join("b.csv");
    write_file(&src, 10_000, 5);
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    rig.settle(1, Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !checkvalve_formats::live::State::read(&rig.out.join(".checkvalve"))
        .is_some_and(|l| l.authenticated)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "live state never said authenticated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!rig.receiver.log_text().contains("NOT authenticated"));
}

#[test]
fn refusals_are_logged_even_when_nothing_is_accepted() {
    let rig = Rig::start(None, &[]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let hb = checkvalve_common::wire::Heartbeat {
        session: 0x5eed,
        seq: 0,
        datagrams_sent: 0,
        objects_sent: 0,
        interval_ms: 1000,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // Unauthenticated heartbeats only: every one refused, not one accepted.
    while !rig
        .receiver
        .log_text()
        .contains("refused by authentication")
    {
        let _ = sock.send_to(&hb.to_bytes(), &rig.receiver_addr);
        assert!(
            std::time::Instant::now() < deadline,
            "refusals never logged: {}",
            rig.receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rig.receiver.log_text().contains("unauthenticated="));
}

#[test]
fn a_preflight_reads_the_key_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("no-such.key");
    let out = dir.path().join("out");
    let receive = format!(
        "bind = \"127.0.0.1:0\"\nout = \"{}\"\nkeys = [\"{}\"]\n",
        out.display(),
        missing.display()
    );
    check_fails(
        dir.path(),
        "checkvalve-receive",
        "receive.toml",
        &receive,
        "no-such.key",
    );
    let send = |key: &std::path::Path| {
        format!(
            "to = \"127.0.0.1:9\"\nkey = \"{}\"\n[[channel]]\nname = \"a\"\nspool = \"{}\"\n",
            key.display(),
            dir.path().join("spool").display()
        )
    };
    check_fails(
        dir.path(),
        "checkvalve-send",
        "send.toml",
        &send(&missing),
        "no-such.key",
    );
    // A key others can read is refused too.
    let open = checkvalve_tests::keygen(dir.path(), 4);
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    check_fails(
        dir.path(),
        "checkvalve-send",
        "send-2.toml",
        &send(&open),
        "key-4",
    );
}

#[test]
fn keyed_datagrams_fit_a_1500_byte_link_and_a_shard_that_would_not_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = checkvalve_tests::keygen(dir.path(), 1);
    let src = dir.path().join("a.bin");
    write_file(&src, 300_000, 6);
    let link = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    link.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let to = link.local_addr().expect("addr").to_string();
    let mut sender = Proc::start(
        dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &strings(&[
            "--to",
            &to,
            "--rate",
            "50M",
            "--key",
            &key.display().to_string(),
            &src.display().to_string(),
        ]),
    );
    let mut buf = vec![0u8; 65_536];
    let (mut count, mut largest) = (0u32, 0usize);
    while let Ok(n) = link.recv(&mut buf) {
        count += 1;
        largest = largest.max(n);
    }
    assert!(sender.wait(Duration::from_secs(30)).success());
    assert!(count > 200, "{count} datagrams");
    // 1,500 bytes less the IPv6 and UDP headers.
    assert!(largest <= 1452, "a datagram of {largest} bytes");
    let (code, log) = refused(
        dir.path(),
        "sender-too-big",
        "checkvalve-send",
        &strings(&[
            "--to",
            &to,
            "--shard-size",
            "1400",
            "--key",
            &key.display().to_string(),
            &src.display().to_string(),
        ]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("mtu"), "{log}");
}

/// `--check` is a preflight of the host too: folders that cannot be used and an address that
/// cannot be bound fail it (exit 2, naming them); a usable configuration passes (exit 0).
#[test]
fn a_preflight_checks_the_folders_and_binds_the_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = checkvalve_tests::keygen(dir.path(), 1);
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").expect("file");
    let receive = |bind: &str, out: &std::path::Path| {
        format!(
            "bind = \"{bind}\"\nout = \"{}\"\nkeys = [\"{}\"]\n",
            out.display(),
            key.display()
        )
    };
    check_fails(
        dir.path(),
        "checkvalve-receive",
        "r1.toml",
        &receive("127.0.0.1:0", &blocker.join("share")),
        "output folder",
    );
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let good_out = dir.path().join("share");
    check_fails(
        dir.path(),
        "checkvalve-receive",
        "r2.toml",
        &receive(&addr, &good_out),
        &format!("cannot bind {addr}"),
    );
    drop(taken);
    let cfg = dir.path().join("r3.toml");
    std::fs::write(&cfg, receive(&addr, &good_out)).expect("config");
    let (code, log) = refused(
        dir.path(),
        "r3-check",
        "checkvalve-receive",
        &strings(&["--config", &cfg.display().to_string(), "--check"]),
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(!good_out.exists(), "a preflight creates nothing");
    let send = |spool: &std::path::Path| {
        format!(
            "to = \"127.0.0.1:9\"\nkey = \"{}\"\n[[channel]]\nname = \"a\"\nspool = \"{}\"\n",
            key.display(),
            spool.display()
        )
    };
    check_fails(
        dir.path(),
        "checkvalve-send",
        "s1.toml",
        &send(&blocker.join("spool")),
        "spool of channel \"a\"",
    );
    let cfg = dir.path().join("s2.toml");
    std::fs::write(&cfg, send(&dir.path().join("spool"))).expect("config");
    let (code, log) = refused(
        dir.path(),
        "s2-check",
        "checkvalve-send",
        &strings(&["--config", &cfg.display().to_string(), "--check"]),
    );
    assert_eq!(code, Some(0), "{log}");
}
