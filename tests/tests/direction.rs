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
            .contains("seccomp: only the system calls a receiver needs are allowed"),
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
        checkvalve_tests::skip("strace cannot run here");
        return;
    };
    let calls = std::fs::read_to_string(&trace).unwrap_or_default();
    if !status.success() && calls.is_empty() {
        checkvalve_tests::skip(&format!(
            "strace cannot trace here: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
        return;
    }
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("seccomp: only the system calls a sender needs are allowed"),
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
                "connect(",
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

/// Builds the hostile library of `tests/probe/preload.c` into `dir`.
fn hostile_library(dir: &std::path::Path) -> std::path::PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/preload.c");
    let lib = dir.join("libprobe.so");
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .output()
        .expect("gcc (the CI script installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// What the probe reported about `what` in `log`, once it has.
fn probe_result(proc: &checkvalve_tests::Proc, what: &str) -> String {
    let needle = format!("probe: {what}=");
    checkvalve_tests::wait_for_log(proc, &needle, Duration::from_secs(20));
    let log = proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_default();
    line[line.find(&needle).unwrap_or(0) + needle.len()..].to_string()
}

/// A library preloaded into either program (a compromised dependency, as docs/security.md has it)
/// cannot open an inet or a packet socket two seconds after start, even from a thread it started
/// before main; one inside the sender cannot create a file beside its spool folder; both programs
/// still work with it inside.
#[test]
fn a_hostile_library_inside_either_program_opens_no_socket_and_writes_beside_no_spool() {
    let dir = tempfile::tempdir().expect("tmp");
    let lib = hostile_library(dir.path());
    let preload = [("LD_PRELOAD", lib.as_os_str())];
    let key = checkvalve_tests::keygen(dir.path(), 1);
    let out = dir.path().join("out");
    let receiver = checkvalve_tests::Proc::start_env(
        dir.path(),
        "receiver",
        &bin("checkvalve-receive"),
        &[
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--out".into(),
            out.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
        &preload,
    );
    let to = checkvalve_tests::bound_addr(&receiver, " receiving", Duration::from_secs(20));
    let sp = dir.path().join("sp");
    let spool = sp.join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let config = dir.path().join("send.toml");
    std::fs::write(
        &config,
        format!(
            "to = \"{to}\"\nkey = \"{}\"\nsettle = \"1s\"\nrate = \"100M\"\n[[channel]]\nname = \"ch\"\nspool = \"{}\"\n",
            key.display(),
            spool.display()
        ),
    )
    .expect("config");
    let beside = sp.join("sibling");
    let sender = checkvalve_tests::Proc::start_env(
        dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &["--config".into(), config.display().to_string()],
        &[
            ("LD_PRELOAD", lib.as_os_str()),
            ("PROBE_BESIDE", beside.as_os_str()),
        ],
    );
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    for (name, p) in [("receiver", &receiver), ("sender", &sender)] {
        for what in ["inet_socket", "packet_socket"] {
            assert_eq!(
                probe_result(p, what),
                "Operation not permitted",
                "{name}: {what}"
            );
        }
    }
    // The spool thread looks at a new file (statx): the probe acts then, on a confined thread.
    checkvalve_tests::write_file(&spool.join("a.bin"), 50_000, 7);
    assert_eq!(
        probe_result(&sender, "create_beside"),
        "Permission denied",
        "the sender created a file beside its spool"
    );
    assert!(!beside.exists());
    for p in [&receiver, &sender] {
        assert!(
            p.log_text()
                .contains("threads started before the confinement"),
            "the library's thread went unmentioned:\n{}",
            p.log_text()
        );
    }
    let arrived = out.join("ch/a.bin");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !arrived.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        arrived.exists(),
        "nothing crossed with the library inside:\n{}\n{}",
        checkvalve_tests::tail(&sender.log),
        checkvalve_tests::tail(&receiver.log)
    );
}
