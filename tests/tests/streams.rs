//! Record streams end to end: real syslog clients (`logger`), the sender's inputs' process, the
//! link (through the simulator's loss when asked), and the receiver's channel files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, Rig, bound_addr};

/// A stream sender of `rig` with `streams` (NAME=URL), its state in `state`.
fn stream_sender(rig: &Rig, tag: &str, state: &Path, streams: &[&str]) -> Proc {
    let mut extra = vec!["--state".to_string(), state.display().to_string()];
    for s in streams {
        extra.extend(["--stream".to_string(), s.to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    rig.start_sender(tag, &[], &extra)
}

/// The channel's lines, all its files in order of their day.
fn channel_lines(out: &Path, channel: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join(channel))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What a channel's file says: the record numbers (`rec N` ending each record line) and the
/// markers' `missing=` counts.
#[derive(Debug, Default)]
struct Seen {
    numbers: Vec<u64>,
    missing: u64,
    markers: usize,
    /// Lines neither a marker nor ending with a record number.
    garbled: usize,
}

fn seen(out: &Path, channel: &str) -> Seen {
    let mut s = Seen::default();
    for line in channel_lines(out, channel) {
        if let Some(rest) = line.strip_prefix("#checkvalve gap ") {
            s.markers += 1;
            s.missing += rest
                .split(' ')
                .find_map(|f| f.strip_prefix("missing="))
                .and_then(|n| n.parse::<u64>().ok())
                .expect("missing= in every marker");
            continue;
        }
        match line
            .rsplit_once("rec ")
            .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        {
            Some(n) => s.numbers.push(n),
            None => s.garbled += 1,
        }
    }
    s
}

/// Waits until the channel accounts for `expected` records (written + missing), at most `limit`.
fn wait_for_records(out: &Path, channel: &str, expected: u64, limit: Duration) -> Seen {
    let deadline = Instant::now() + limit;
    loop {
        let s = seen(out, channel);
        if s.numbers.len() as u64 + s.missing >= expected || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` lines `<prefix> rec I` in a file, for `logger -f`.
fn numbered(dir: &Path, name: &str, n: u64) -> PathBuf {
    let path = dir.join(name);
    let text: String = (0..n)
        .map(|i| format!("pump P-101 vibration ok rec {i}\n"))
        .collect();
    std::fs::write(&path, text).expect("lines");
    path
}

fn logger(args: &[&str]) {
    let out = Command::new("logger")
        .args(args)
        .output()
        .expect("logger (util-linux) runs");
    assert!(
        out.status.success(),
        "logger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_in_order_once(s: &Seen) {
    assert!(
        s.numbers.windows(2).all(|w| w[0] < w[1]),
        "records out of order or repeated"
    );
}

#[test]
fn a_hundred_thousand_records_from_logger_over_tcp_arrive_in_order_each_once() {
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["syslog=tcp://127.0.0.1:0"]);
    let at = bound_addr(
        &sender,
        "stream input listening (tcp) channel=syslog",
        Duration::from_secs(20),
    );
    let (host, port) = at.rsplit_once(':').expect("HOST:PORT");
    let lines = numbered(rig.dir.path(), "lines", 100_000);
    logger(&[
        "-T",
        "-n",
        host,
        "-P",
        port,
        "-f",
        &lines.display().to_string(),
    ]);
    let s = wait_for_records(&rig.out, "syslog", 100_000, Duration::from_secs(120));
    assert_eq!(s.garbled, 0);
    assert_eq!(s.markers, 0, "no loss on a clean link");
    assert_in_order_once(&s);
    assert_eq!(
        s.numbers.len(),
        100_000,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    assert_eq!(s.numbers.first(), Some(&0));
    assert_eq!(s.numbers.last(), Some(&99_999));
}

/// Sends 100,000 numbered records through `logger` (`framing` its extra arguments) and the
/// simulator with `sim`; checks that every delivered record is intact and in order, that
/// delivered + missing = sent, that each marker stands where its records would have been and
/// has its manifest record; returns what the channel holds.
fn through_loss(sim: &[&str], framing: &[&str]) -> Seen {
    let rig = Rig::start(Some(sim), &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["syslog=tcp://127.0.0.1:0"]);
    let at = bound_addr(
        &sender,
        "stream input listening (tcp) channel=syslog",
        Duration::from_secs(20),
    );
    let (host, port) = at.rsplit_once(':').expect("HOST:PORT");
    let lines = numbered(rig.dir.path(), "lines", 100_000);
    let file = lines.display().to_string();
    let mut args = vec!["-T", "-n", host, "-P", port, "-f", &file];
    args.extend(framing);
    logger(&args);
    let s = wait_for_records(&rig.out, "syslog", 100_000, Duration::from_secs(120));
    assert_eq!(s.garbled, 0, "every delivered record intact");
    assert_in_order_once(&s);
    assert_eq!(
        s.numbers.len() as u64 + s.missing,
        100_000,
        "delivered + missing = sent ({} delivered, {} missing in {} markers)",
        s.numbers.len(),
        s.missing,
        s.markers
    );
    // Each marker stands where its records would have been: the numbers around it say how many.
    let mut lines = channel_lines(&rig.out, "syslog").into_iter().peekable();
    let mut last: Option<u64> = None;
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("#checkvalve gap ") {
            let missing: u64 = rest
                .split(' ')
                .find_map(|f| f.strip_prefix("missing="))
                .and_then(|n| n.parse().ok())
                .expect("missing=");
            let next = lines
                .peek()
                .and_then(|l| {
                    l.rsplit_once("rec ")
                        .and_then(|(_, n)| n.parse::<u64>().ok())
                })
                .unwrap_or(100_000);
            assert_eq!(
                last.map_or(0, |l| l + 1) + missing,
                next,
                "marker in place: {line}"
            );
        } else {
            last = line.rsplit_once("rec ").and_then(|(_, n)| n.parse().ok());
        }
    }
    // The manifest's records are written beside the markers: wait for them to be there too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gaps = rig
            .outcome()
            .events
            .iter()
            .filter(|r| r.status == checkvalve_tests::Status::StreamGap)
            .count();
        if gaps == s.markers || Instant::now() >= deadline {
            assert_eq!(gaps, s.markers, "one manifest record per marker");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

#[test]
fn through_two_percent_bursty_loss_every_record_is_delivered_intact_in_order_or_counted_missing() {
    // Octet-counted framing (RFC 6587) this time.
    through_loss(
        &["--loss", "2%", "--burst", "10", "--seed", "5"],
        &["--octet-count"],
    );
}

#[test]
fn at_heavy_loss_each_gap_is_one_marker_in_place_with_the_exact_count() {
    let s = through_loss(&["--loss", "30%", "--burst", "60", "--seed", "8"], &[]);
    assert!(
        s.markers > 0,
        "30 % loss in bursts of 60 takes whole batches"
    );
    assert!(s.numbers.len() > 10_000, "most batches still cross");
}

#[test]
fn twenty_thousand_records_from_logger_over_udp_arrive_in_order() {
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["fw=udp://127.0.0.1:0"]);
    let at = bound_addr(
        &sender,
        "stream input listening (udp) channel=fw",
        Duration::from_secs(20),
    );
    let (host, port) = at.rsplit_once(':').expect("HOST:PORT");
    let lines = numbered(rig.dir.path(), "lines", 20_000);
    logger(&[
        "-d",
        "-n",
        host,
        "-P",
        port,
        "-f",
        &lines.display().to_string(),
    ]);
    // UDP may drop before the sender (the kernel's buffer): what arrived is then all written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut s = seen(&rig.out, "fw");
    let mut stable = 0;
    while Instant::now() < deadline && stable < 10 {
        std::thread::sleep(Duration::from_millis(300));
        let now = seen(&rig.out, "fw");
        stable = if now.numbers.len() == s.numbers.len() && !now.numbers.is_empty() {
            stable + 1
        } else {
            0
        };
        s = now;
    }
    assert_eq!(s.garbled, 0);
    assert_eq!(s.markers, 0, "nothing lost on the link");
    assert_in_order_once(&s);
    assert!(
        s.numbers.len() >= 19_800,
        "at most 1 % dropped before the sender: {} of 20,000 arrived",
        s.numbers.len()
    );
}

/// Appends records `range` to `file`, one line each, flushed line by line like a logging app.
fn append_records(file: &Path, range: std::ops::Range<u64>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("log file");
    for i in range {
        writeln!(f, "app event rec {i}").expect("append");
    }
}

#[test]
fn a_followed_file_rotated_by_rename_and_by_copytruncate_across_a_sigkill_gives_every_line_once() {
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let logs = rig.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let log = logs.join("app.log");
    let input = format!("app=file://{}", log.display());
    append_records(&log, 0..1000);
    let mut sender = stream_sender(&rig, "sender-1", &state, &[&input]);
    let s = wait_for_records(&rig.out, "app", 1000, Duration::from_secs(60));
    assert_eq!(
        s.numbers.len(),
        1000,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    // Rotation by rename: the rest of the old file, then the new one from its start.
    append_records(&log, 1000..1500);
    std::fs::rename(&log, logs.join("app.log.1")).expect("rotate");
    append_records(&log, 1500..2000);
    let s = wait_for_records(&rig.out, "app", 2000, Duration::from_secs(60));
    assert_eq!(
        s.numbers.len(),
        2000,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    // The sender killed outright while the file grows; the next one resumes where the spool says.
    append_records(&log, 2000..2300);
    let pid = sender.pid().expect("running") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    sender.wait(Duration::from_secs(10));
    append_records(&log, 2300..3000);
    let sender = stream_sender(&rig, "sender-2", &state, &[&input]);
    let s = wait_for_records(&rig.out, "app", 3000, Duration::from_secs(60));
    assert_eq!(
        s.numbers.len(),
        3000,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    // Rotation by copytruncate: the copy is the operator's; the file is read again from its start.
    std::fs::copy(&log, logs.join("app.log.2")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    std::thread::sleep(Duration::from_millis(500));
    append_records(&log, 3000..3100);
    let s = wait_for_records(&rig.out, "app", 3100, Duration::from_secs(60));
    assert_eq!(s.garbled, 0);
    assert_eq!(s.markers, 0);
    assert_in_order_once(&s);
    assert_eq!(
        s.numbers,
        (0..3100).collect::<Vec<_>>(),
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
}
