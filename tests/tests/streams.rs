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

/// The day and part of a channel file (`2026-12-03.log` is part 0, `2026-12-03.2.log` part 2).
fn file_key(path: &Path) -> (String, u32) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match stem.split_once('.') {
        Some((day, part)) => (day.to_owned(), part.parse().expect("part number")),
        None => (stem.to_owned(), 0),
    }
}

/// The channel's lines, all its files in order of their day and part.
fn channel_lines(out: &Path, channel: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join(channel))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort_by_key(|p| file_key(p));
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

/// Where a sender's input of `kind` (`tcp`, `udp`) for `channel` listens, from its log.
fn input_at(sender: &Proc, kind: &str, channel: &str) -> String {
    bound_addr(
        sender,
        &format!("stream input listening ({kind}) channel={channel}"),
        Duration::from_secs(20),
    )
}

/// Sends the lines of `file` with `logger` (`args`: transport and framing) to `at`.
fn logger_to(at: &str, args: &[&str], file: &Path) {
    let (host, port) = at.rsplit_once(':').expect("HOST:PORT");
    let file = file.display().to_string();
    let mut all = args.to_vec();
    all.extend(["-n", host, "-P", port, "-f", &file]);
    logger(&all);
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
    let at = input_at(&sender, "tcp", "syslog");
    let lines = numbered(rig.dir.path(), "lines", 100_000);
    logger_to(&at, &["-T"], &lines);
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
    // `checkvalve-send status` shows the input and how far its records went.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(checkvalve_tests::bin("checkvalve-send"))
            .args(["status", "--json", "--state"])
            .arg(&state)
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let st = &v["status"]["streams"][0];
        if st["sent"] == 100_000 || Instant::now() >= deadline {
            assert_eq!(st["name"], "syslog");
            assert_eq!(st["input"], "tcp://127.0.0.1:0");
            assert_eq!(st["spooled"], 100_000, "{v}");
            assert_eq!(st["sent"], 100_000, "{v}");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends 100,000 numbered records through `logger` (`framing` its extra arguments) and the
/// simulator with `sim`; checks that every delivered record is intact and in order, that
/// delivered + missing = sent, that each marker stands where its records would have been and
/// has its manifest record; returns what the channel holds.
fn through_loss(sim: &[&str], framing: &[&str]) -> Seen {
    let rig = Rig::start(Some(sim), &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["syslog=tcp://127.0.0.1:0"]);
    let at = input_at(&sender, "tcp", "syslog");
    let lines = numbered(rig.dir.path(), "lines", 100_000);
    let mut args = vec!["-T"];
    args.extend(framing);
    logger_to(&at, &args, &lines);
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
    // The report counts them by channel.
    let report = Command::new(checkvalve_tests::bin("checkvalve-receive"))
        .args(["report", "--out", &rig.out.display().to_string()])
        .args(["--format", "json"])
        .output()
        .expect("report");
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    assert_eq!(r["records_missing"], s.missing, "{r}");
    if s.markers > 0 {
        assert_eq!(
            r["record_channels"],
            serde_json::json!([{"channel": "syslog", "gaps": s.markers, "records_missing": s.missing}]),
            "{r}"
        );
    } else {
        assert_eq!(r["record_channels"], serde_json::json!([]), "{r}");
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
    let at = input_at(&sender, "udp", "fw");
    let lines = numbered(rig.dir.path(), "lines", 20_000);
    logger_to(&at, &["-d"], &lines);
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

/// A port on 127.0.0.1 free a moment ago, for a program that cannot bind port 0 and say so.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Publishes `per_topic` numbered messages (`value rec I`, I from `first`) on each of `topics`
/// topics `plant/tN` with QoS 1 through `mosquitto_pub`.
fn publish(port: u16, topics: u64, per_topic: u64, first: u64) {
    use std::io::Write;
    for t in 0..topics {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
            .args(["-t", &format!("plant/t{t}")])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (mosquitto-clients) runs");
        let mut stdin = child.stdin.take().expect("stdin");
        for i in 0..per_topic {
            writeln!(stdin, "21.5 good rec {}", first + t * per_topic + i).expect("publish");
        }
        drop(stdin);
        assert!(child.wait().expect("mosquitto_pub").success());
    }
}

/// The (topic, number) of every record line of an MQTT channel: `TOPIC<TAB>PAYLOAD`.
fn topics_seen(out: &Path, channel: &str) -> Vec<(String, u64)> {
    channel_lines(out, channel)
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (topic, payload) = l.split_once('\t').expect("TOPIC<TAB>PAYLOAD");
            let n = payload
                .rsplit_once("rec ")
                .and_then(|(_, n)| n.parse().ok())
                .expect("numbered payload");
            (topic.to_owned(), n)
        })
        .collect()
}

#[test]
fn ten_thousand_mqtt_messages_on_a_hundred_topics_arrive_with_their_topics_and_a_restart_misses_none()
 {
    let rig = Rig::start(None, &[]);
    let port = free_tcp_port();
    let conf = rig.dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("broker config");
    let broker = Proc::start(
        rig.dir.path(),
        "mosquitto",
        Path::new("mosquitto"),
        &["-c".into(), conf.display().to_string()],
    );
    checkvalve_tests::wait_for_log(&broker, "running", Duration::from_secs(20));
    let state = rig.dir.path().join("state");
    let input = format!("points=mqtt://127.0.0.1:{port}/plant/#");
    let mut sender = stream_sender(&rig, "sender-1", &state, &[&input]);
    checkvalve_tests::wait_for_log(&sender, "mqtt input: connected", Duration::from_secs(20));
    publish(port, 100, 100, 0);
    let s = wait_for_records(&rig.out, "points", 10_000, Duration::from_secs(60));
    assert_eq!(
        s.numbers.len(),
        10_000,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    // The sender away: the broker keeps its persistent session's messages until it is back.
    assert!(sender.stop().success());
    publish(port, 10, 50, 10_000);
    let sender = stream_sender(&rig, "sender-2", &state, &[&input]);
    let s = wait_for_records(&rig.out, "points", 10_500, Duration::from_secs(60));
    assert_eq!(s.markers, 0);
    assert_eq!(
        s.numbers.len(),
        10_500,
        "{}",
        checkvalve_tests::tail(&sender.log)
    );
    let seen = topics_seen(&rig.out, "points");
    let mut want: Vec<(String, u64)> = (0..10_000)
        .map(|i| (format!("plant/t{}", i / 100), i))
        .chain((10_000..10_500).map(|i| (format!("plant/t{}", (i - 10_000) / 50), i)))
        .collect();
    let mut got = seen.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every message once, with its topic");
    // Per topic, in the order published.
    for t in 0..100 {
        let topic = format!("plant/t{t}");
        let n: Vec<u64> = seen
            .iter()
            .filter(|(p, _)| *p == topic)
            .map(|p| p.1)
            .collect();
        assert!(n.windows(2).all(|w| w[0] < w[1]), "{topic} in order");
    }
}

#[test]
fn real_rsyslog_tails_a_channel_file_and_forwards_every_record() {
    use std::io::BufRead;
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["syslog=tcp://127.0.0.1:0"]);
    let at = input_at(&sender, "tcp", "syslog");
    let lines = numbered(rig.dir.path(), "lines", 5_000);
    logger_to(&at, &["-T"], &lines);
    let s = wait_for_records(&rig.out, "syslog", 5_000, Duration::from_secs(60));
    assert_eq!(s.numbers.len(), 5_000);
    // The SIEM: a TCP listener in the test, counting what rsyslog forwards.
    let siem = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let siem_port = siem.local_addr().expect("addr").port();
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in siem.incoming().flatten() {
            let got_tx = got_tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(conn).lines().map_while(Result::ok) {
                    let _ = got_tx.send(line);
                }
            });
        }
    });
    let work = rig.dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).expect("work dir");
    let conf = work.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile")
template(name="raw" type="string" string="%msg%\n")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{siem_port}" protocol="tcp" template="raw")
}}
input(type="imfile" file="{out}/syslog/*.log" tag="plant:" ruleset="fwd" freshStartTail="off")
"#,
            work = work.display(),
            out = rig.out.display(),
        ),
    )
    .expect("rsyslog config");
    let _rsyslog = Proc::start(
        rig.dir.path(),
        "rsyslog",
        Path::new("rsyslogd"),
        &[
            "-n".into(),
            "-f".into(),
            conf.display().to_string(),
            "-i".into(),
            work.join("rsyslogd.pid").display().to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut forwarded = std::collections::BTreeSet::new();
    while forwarded.len() < 5_000 && Instant::now() < deadline {
        if let Ok(line) = got_rx.recv_timeout(Duration::from_millis(200))
            && let Some(n) = line
                .rsplit_once("rec ")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        {
            forwarded.insert(n);
        }
    }
    assert_eq!(
        forwarded.len(),
        5_000,
        "rsyslog forwarded every record of the channel file"
    );
}

#[test]
fn the_simulators_historian_feed_crosses_as_numbered_points_in_order() {
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["historian=tcp://127.0.0.1:0"]);
    let at = input_at(&sender, "tcp", "historian");
    let feed = Command::new(checkvalve_tests::bin("checkvalve-sim"))
        .args([
            "historian",
            "--tags",
            "50",
            "--rate",
            "5k/s",
            "--count",
            "3000",
        ])
        .args(["--to", &format!("tcp://{at}")])
        .output()
        .expect("checkvalve-sim historian");
    assert!(
        feed.status.success(),
        "{}",
        String::from_utf8_lossy(&feed.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = channel_lines(&rig.out, "historian");
    while lines.len() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        lines = channel_lines(&rig.out, "historian");
    }
    assert_eq!(lines.len(), 3000, "{}", checkvalve_tests::tail(&sender.log));
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "time,tag,value,quality,number: {line}");
        assert!(f[1].starts_with("PLANT1.U01."), "{line}");
        assert!(f[2].parse::<f64>().is_ok(), "{line}");
        assert!(["GOOD", "UNCERTAIN", "BAD"].contains(&f[3]), "{line}");
        assert_eq!(f[4], i.to_string(), "in order, each once");
        assert!(humantime::parse_rfc3339(f[0]).is_ok(), "{line}");
    }
}

#[test]
fn json_lines_carry_each_records_number_and_a_receiver_killed_mid_stream_writes_none_twice() {
    let mut rig = Rig::start(None, &["--stream-format", "json"]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["points=tcp://127.0.0.1:0"]);
    let at = input_at(&sender, "tcp", "points");
    let mut feed = Command::new(checkvalve_tests::bin("checkvalve-sim"))
        .args([
            "historian",
            "--tags",
            "20",
            "--rate",
            "2000/s",
            "--count",
            "8000",
        ])
        .args(["--to", &format!("tcp://{at}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("checkvalve-sim historian");
    std::thread::sleep(Duration::from_millis(1500));
    // Killed outright: its saved positions lag what it wrote, and must be counted back at start.
    let pid = rig.receiver.pid().expect("running") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    rig.receiver.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let key = rig.key.clone().expect("keyed rig");
    let restarted = Proc::start(
        rig.dir.path(),
        "receiver-2",
        &checkvalve_tests::bin("checkvalve-receive"),
        &[
            "--bind".into(),
            rig.receiver_addr.clone(),
            "--out".into(),
            rig.out.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--stream-format".into(),
            "json".into(),
        ],
    );
    assert!(feed.wait().expect("feed").success());
    let file = || -> Vec<serde_json::Value> {
        std::fs::read_dir(rig.out.join("points"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("every line one JSON object"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut records, mut missing) = (Vec::new(), 0);
    while Instant::now() < deadline {
        let lines = file();
        records = lines.iter().filter_map(|v| v["seq"].as_u64()).collect();
        missing = lines
            .iter()
            .filter_map(|v| v["gap"]["missing"].as_u64())
            .sum::<u64>();
        if records.len() as u64 + missing >= 8000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        records.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice"
    );
    assert_eq!(
        records.len() as u64 + missing,
        8000,
        "written + missing = sent:\n{}",
        checkvalve_tests::tail(&restarted.log)
    );
    // Each record line says what it carries: its number, the sender's time, the point itself.
    let lines = file();
    let first = lines.iter().find(|v| v["seq"] == 0).expect("record 0");
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(first["record"].as_str().is_some_and(|r| r.ends_with(",0")));
    for v in lines.iter().filter(|v| v.get("gap").is_some()) {
        let g = &v["gap"];
        assert_eq!(
            g["last_seq"].as_u64().unwrap() + 1 - g["first_seq"].as_u64().unwrap(),
            g["missing"].as_u64().unwrap()
        );
    }
}

#[test]
fn records_piped_into_standard_input_cross_and_the_sender_outlives_the_pipe() {
    use std::io::Write;
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let mut args = vec![
        "--to".to_string(),
        rig.send_to.clone(),
        "--state".into(),
        state.display().to_string(),
        "--stream".into(),
        "piped=-".into(),
    ];
    args.extend(rig.sender_auth());
    let mut sender = Command::new(checkvalve_tests::bin("checkvalve-send"))
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::fs::File::create(rig.dir.path().join("sender.log")).expect("log"))
        .spawn()
        .expect("sender");
    {
        let mut pipe = sender.stdin.take().expect("stdin");
        for i in 0..5000 {
            writeln!(pipe, "piped line rec {i}").expect("pipe");
        }
    }
    let s = wait_for_records(&rig.out, "piped", 5000, Duration::from_secs(60));
    assert_eq!(s.numbers, (0..5000).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sender.try_wait().expect("sender").is_none(),
        "the sender runs on after its standard input ended"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sender.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sender.wait();
}

#[test]
fn a_channel_file_past_its_size_limit_continues_in_numbered_parts_in_order() {
    let rig = Rig::start(None, &["--stream-max-file", "64K"]);
    let state = rig.dir.path().join("state");
    let sender = stream_sender(&rig, "sender", &state, &["syslog=tcp://127.0.0.1:0"]);
    let at = input_at(&sender, "tcp", "syslog");
    let lines = numbered(rig.dir.path(), "lines", 20_000);
    logger_to(&at, &["-T"], &lines);
    let s = wait_for_records(&rig.out, "syslog", 20_000, Duration::from_secs(60));
    assert_eq!(
        s.numbers,
        (0..20_000).collect::<Vec<_>>(),
        "in order across the parts"
    );
    let parts: Vec<(PathBuf, u64)> = std::fs::read_dir(rig.out.join("syslog"))
        .expect("channel folder")
        .flatten()
        .map(|e| (e.path(), e.metadata().expect("size").len()))
        .collect();
    assert!(
        parts.len() > 10,
        "about 2 MB in parts of 64 KiB: {} parts",
        parts.len()
    );
    for (path, len) in &parts {
        // A part ends with the batch that would have crossed the limit.
        assert!(
            *len <= (64 << 10) + (256 << 10),
            "{}: {len} bytes",
            path.display()
        );
    }
}

#[test]
fn a_udp_input_on_a_multicast_group_takes_what_is_sent_to_the_group() {
    let rig = Rig::start(None, &[]);
    let state = rig.dir.path().join("state");
    let group = "239.255.77.7";
    let sender = stream_sender(
        &rig,
        "sender",
        &state,
        &[&format!("mc=udp://{group}:0?iface=127.0.0.1")],
    );
    let at = input_at(&sender, "udp", "mc");
    let port: u16 = at
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    socket2::SockRef::from(&tx)
        .set_multicast_if_v4(&"127.0.0.1".parse().expect("addr"))
        .expect("IP_MULTICAST_IF");
    for i in 0..2000 {
        tx.send_to(format!("historian point rec {i}").as_bytes(), (group, port))
            .expect("send to the group");
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let s = wait_for_records(&rig.out, "mc", 2000, Duration::from_secs(30));
    assert_in_order_once(&s);
    assert!(
        s.numbers.len() >= 1980,
        "{} of 2,000 arrived",
        s.numbers.len()
    );
}
