//! One direction, seen from the kernel: `strace -f` of a whole transfer shows the sender never
//! making a receiving call, and both programs install their seccomp filter.

use std::process::Command;
use std::time::Duration;

use checkvalve_tests::{Rig, bin, make_tree};

#[test]
fn the_sender_never_receives_and_both_ends_install_their_filter() {
    let rig = Rig::start(None, &[]);
    assert!(
        rig.receiver
            .log_text()
            .contains("seccomp: sending and connecting are forbidden"),
        "{}",
        rig.receiver.log_text()
    );
    let src = make_tree(rig.dir.path(), "traced", 6, 200_000, 3);
    let trace = rig.dir.path().join("sender.strace");
    let log = rig.dir.path().join("sender.log");
    let run = Command::new("timeout")
        .arg("120")
        .arg("strace")
        .args(["-f", "-qq", "-e", "trace=%network,io_uring_setup", "-o"])
        .arg(&trace)
        .arg(bin("checkvalve-send"))
        .args(["--to", &rig.send_to, "--rate", "100M"])
        .args(rig.sender_auth())
        .arg(&src)
        .stderr(std::fs::File::create(&log).expect("log"))
        .status();
    let Ok(status) = run else {
        eprintln!("SKIPPED: strace cannot run here");
        return;
    };
    let calls = std::fs::read_to_string(&trace).unwrap_or_default();
    if !status.success() && calls.is_empty() {
        eprintln!(
            "SKIPPED: strace cannot trace here: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        return;
    }
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("seccomp: receiving system calls are forbidden"),
        "{log}"
    );
    let sends = calls
        .lines()
        .filter(|l| l.contains("sendto(") || l.contains("sendmsg("))
        .count();
    assert!(sends > 0, "strace saw no send: {calls}");
    let receives: Vec<&str> = calls
        .lines()
        .filter(|l| {
            [
                "recvfrom(",
                "recvmsg(",
                "recvmmsg(",
                "accept(",
                "accept4(",
                "listen(",
                "io_uring_setup(",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
        .collect();
    assert!(receives.is_empty(), "the sender received: {receives:?}");
    let outcome = rig.settle(checkvalve_tests::count_files(&src), Duration::from_secs(30));
    assert_eq!(outcome.delivered.len(), checkvalve_tests::count_files(&src));
}
