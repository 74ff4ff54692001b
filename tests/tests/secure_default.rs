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
    let rcfg = dir.path().join("receive.toml");
    std::fs::write(
        &rcfg,
        format!("bind = \"127.0.0.1:0\"\nout = \"{}\"\n", out.display()),
    )
    .expect("config");
    let (code, log) = refused(
        dir.path(),
        "receiver-check",
        "checkvalve-receive",
        &strings(&["--config", &rcfg.display().to_string(), "--check"]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("allow_unauthenticated"), "{log}");
    let scfg = dir.path().join("send.toml");
    std::fs::write(
        &scfg,
        format!(
            "to = \"127.0.0.1:9\"\n[[channel]]\nname = \"a\"\nspool = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .expect("config");
    let (code, log) = refused(
        dir.path(),
        "sender-check",
        "checkvalve-send",
        &strings(&["--config", &scfg.display().to_string(), "--check"]),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("allow_unauthenticated"), "{log}");
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
