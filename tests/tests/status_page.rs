//! The status server: `/metrics` parses as Prometheus text (and passes `promtool check metrics`),
//! `/` renders in a real browser with its chart drawn and turns red in alarm, `/healthz` and
//! `/api/live.json` answer, it works with the receiver stopped, the losses it shows survive a
//! receiver restart, and the receiver sends nothing meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, Rig, bin, write_file};

/// A plain HTTP/1.1 request: (status code, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http_with(addr, method, path, "");
    (code, body)
}

/// A request with extra header lines (each ending CRLF): (status code, headers, body).
fn http_with(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let code = raw[9..12].parse().expect("status code");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    // axum answers with a length or chunks; the body's text is all the tests need.
    (code, head.to_lowercase(), body.to_owned())
}

/// `promtool check metrics` on `text`, if promtool is installed: its complaints, if any.
fn promtool(text: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("exit {}: {said}", out.status)
    })
}

fn metric(text: &str, name: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn browser(exe: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(args)
        .output()
        .expect("run chromium")
}

/// Pixels of `rgb` (within a small tolerance) in a PNG.
fn pixels_of(png: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("frame");
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| {
            p.len() >= 3
                && p[0].abs_diff(rgb.0) < 24
                && p[1].abs_diff(rgb.1) < 24
                && p[2].abs_diff(rgb.2) < 24
        })
        .count()
}

#[test]
fn metrics_parse_the_page_renders_with_its_chart_and_the_receiver_sends_nothing() {
    let mut rig = Rig::start(Some(&["--loss", "3%", "--seed", "8"]), &[]);
    let (mut status, addr) = rig.start_status();
    // Every system call of the receiver on sockets from here on.
    let trace = rig.dir.path().join("receiver.strace");
    let strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=%network,write,writev,pwrite64,io_uring_setup",
            "-o",
        ])
        .arg(&trace)
        .args(["-p", &rig.receiver.pid().expect("receiver").to_string()])
        .spawn();
    let mut strace = match strace {
        Ok(child) => Some(child),
        Err(e) => {
            checkvalve_tests::skip(&format!("the strace check: strace cannot run ({e})"));
            None
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    // A service sender (heartbeats throughout) and traffic for a few seconds, so that the last
    // hour has points to draw.
    let spool = rig.dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let mut sender = Proc::start(
        rig.dir.path(),
        "sender",
        &bin("checkvalve-send"),
        &rig.sender_args(&[
            "--to".into(),
            rig.send_to.clone(),
            "--watch".into(),
            spool.display().to_string(),
            "--rate".into(),
            "100M".into(),
        ]),
    );
    checkvalve_tests::wait_for_log(&sender, " watching", Duration::from_secs(20));
    let staging = rig.dir.path().join("staging");
    for round in 0..4u64 {
        for i in 0..5u64 {
            let tmp = staging.join(format!("r{round}-{i}"));
            write_file(&tmp, 400_000, round * 10 + i);
            let dest = spool.join(format!("r{round}/diag-{i}.csv"));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::rename(&tmp, &dest).expect("rename");
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let outcome = rig.settle(20, Duration::from_secs(30));
    assert_eq!(outcome.delivered.len(), 20, "{outcome:?}");
    std::thread::sleep(Duration::from_millis(1500));

    let (code, text) = http(&addr, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    assert_eq!(metric(&text, "checkvalve_receiver_up"), 1.0);
    assert_eq!(metric(&text, "checkvalve_link_up"), 1.0);
    assert_eq!(metric(&text, "checkvalve_files_delivered_total"), 20.0);
    assert_eq!(
        metric(&text, "checkvalve_files_delivered_bytes_total"),
        20.0 * 400_000.0
    );
    assert!(metric(&text, "checkvalve_datagrams_received_total") > 0.0);
    assert!(metric(&text, "checkvalve_share_free_bytes") > 0.0);
    assert_eq!(metric(&text, "checkvalve_build_info"), 1.0);
    // The shipped dashboard's every query names a metric served here.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../status/dist/grafana-dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("checkvalve_") || w.starts_with("process_"))
                .collect();
            assert!(!names.is_empty(), "a query naming no metric: {expr}");
            for name in names {
                queried += 1;
                assert!(
                    text.contains(&format!("# TYPE {name} ")),
                    "the dashboard queries {name}, which /metrics does not serve"
                );
            }
        }
    }
    assert!(queried > 20, "{queried}");
    match promtool(&text) {
        None => checkvalve_tests::skip("the promtool check: promtool not installed"),
        Some(complaints) => assert!(complaints.is_empty(), "promtool: {complaints}\n{text}"),
    }
    let (_, head, om) = http_with(
        &addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
    );
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        om.contains("# TYPE checkvalve_files_delivered counter") && om.contains("# EOF"),
        "{om}"
    );
    assert_eq!(http(&addr, "GET", "/healthz").0, 200);
    let (code, api) = http(&addr, "GET", "/api/live.json");
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&api).expect("JSON");
    assert_eq!(api["running"], true, "{api}");
    assert_eq!(api["live"]["tally"]["delivered"], 20, "{api}");
    assert!(api["alarms"].is_array(), "{api}");
    // The auditors' report of today, with every file and its digest, the sessions and the key.
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let report = Command::new(bin("checkvalve-receive"))
        .args(["report", "--out"])
        .arg(&rig.out)
        .args(["--since", &today[..10], "--files", "--format", "json"])
        .output()
        .expect("report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let files = report["files"].as_array().expect("--files lists files");
    assert_eq!(files.len(), 20, "{report}");
    assert!(
        files
            .iter()
            .all(|f| f["sha256"].as_str().is_some_and(|h| h.len() == 64)),
        "{report}"
    );
    assert_eq!(
        report["authentication"], "authenticated by key 1",
        "{report}"
    );
    let session = &report["sessions"][0];
    assert!(
        session["loss_rate"].as_f64().is_some() && session["datagrams_sent"].as_u64() > Some(0),
        "the loss up to now, from the heartbeats: {report}"
    );
    assert_eq!(http(&addr, "POST", "/").0, 405, "only GET");
    assert_eq!(http(&addr, "GET", "/../../etc/passwd").0, 404);
    let (code, page) = http(&addr, "GET", "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("Link: UP") && page.contains("r3/diag-4.csv"),
        "{page}"
    );

    if let Some(mut child) = strace.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = child.wait();
        let calls = std::fs::read_to_string(&trace).expect("strace output");
        let received = calls.lines().filter(|l| l.contains("recv")).count();
        let sent: Vec<&str> = calls
            .lines()
            .filter(|l| {
                [
                    "sendto(",
                    "sendmsg(",
                    "sendmmsg(",
                    "connect(",
                    "io_uring_setup(",
                ]
                .iter()
                .any(|c| l.contains(c))
            })
            .collect();
        assert!(received > 0, "strace saw no receive call: {calls}");
        assert!(sent.is_empty(), "the receiver sent: {sent:?}");
    }

    match chromium() {
        None => checkvalve_tests::skip(
            "the browser check: no chromium installed (apt-get install chromium)",
        ),
        Some(exe) => {
            let url = format!("http://{addr}/");
            let dom = browser(exe, rig.dir.path(), &["--dump-dom", &url]);
            let dom = String::from_utf8_lossy(&dom.stdout);
            assert!(
                dom.contains("Receiver: running") && dom.contains("Link: UP"),
                "{dom}"
            );
            assert!(dom.contains(r#"class="series""#), "no chart line: {dom}");
            let shot = rig.dir.path().join("page.png");
            let out = browser(
                exe,
                rig.dir.path(),
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1000,1400",
                    &url,
                ],
            );
            assert!(
                shot.exists(),
                "no screenshot: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The throughput line's colour (#1f6fd1), drawn by the browser.
            let drawn = pixels_of(&shot, (0x1f, 0x6f, 0xd1));
            assert!(
                drawn > 100,
                "the throughput chart is not drawn ({drawn} pixels)"
            );
        }
    }

    // With the receiver stopped, the server still answers, and says so.
    assert!(rig.receiver.stop().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http(&addr, "GET", "/metrics");
        if metric(&text, "checkvalve_receiver_up") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still up: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, page) = http(&addr, "GET", "/");
    assert_eq!(code, 200);
    assert!(page.contains("NOT RUNNING"), "{page}");
    assert_eq!(http(&addr, "GET", "/healthz").0, 503);
    assert!(status.stop().success());
    assert!(sender.stop().success());
    rig.stop_sim();
}

#[test]
fn the_page_alarms_on_lost_files_and_a_link_down_and_the_losses_survive_a_receiver_restart() {
    let mut rig = Rig::start(
        Some(&["--loss", "70%", "--seed", "3"]),
        &["--object-timeout", "2s", "--link-down-after", "3s"],
    );
    let (mut status, addr) = rig.start_status();
    let src = rig.dir.path().join("exports");
    for i in 0..4u64 {
        write_file(&src.join(format!("pump-{i}.csv")), 150_000, i);
    }
    assert!(rig.send(&[&src], &[], Duration::from_secs(60)).success());
    // The losses recorded, and the link down once the sender's heartbeats stop.
    let deadline = Instant::now() + Duration::from_secs(40);
    let api = loop {
        let (_, body) = http(&addr, "GET", "/api/live.json");
        let api: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let kinds: Vec<&str> = api["alarms"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["kind"].as_str()).collect())
            .unwrap_or_default();
        if kinds.contains(&"files_lost") && kinds.contains(&"link_down") {
            break api;
        }
        assert!(Instant::now() < deadline, "no alarm: {api}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let lost = api["live"]["tally"]["lost"].as_u64().expect("lost");
    assert!(lost > 0, "{api}");
    let (_, text) = http(&addr, "GET", "/metrics");
    assert_eq!(metric(&text, "checkvalve_link_up"), 0.0);
    assert_eq!(metric(&text, "checkvalve_objects_lost_total"), lost as f64);
    let (_, page) = http(&addr, "GET", "/");
    assert!(
        page.contains(r#"class="state alarm" id="overall""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-kind="link_down""#) && page.contains(r#"data-kind="files_lost""#),
        "{page}"
    );
    if let Some(exe) = chromium() {
        let url = format!("http://{addr}/");
        let dom = browser(exe, rig.dir.path(), &["--dump-dom", &url]);
        let dom = String::from_utf8_lossy(&dom.stdout);
        assert!(dom.contains(r#"class="state alarm" id="overall""#), "{dom}");
        assert!(dom.contains("the link is down"), "{dom}");
        let shot = rig.dir.path().join("alarm.png");
        browser(
            exe,
            rig.dir.path(),
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1000,1400",
                &url,
            ],
        );
        // The banner's red (#b71c1c), drawn by the browser: a banner is thousands of pixels.
        let red = pixels_of(&shot, (0xb7, 0x1c, 0x1c));
        assert!(
            red > 5_000,
            "the alarm banner is not drawn red ({red} pixels)"
        );
    } else {
        checkvalve_tests::skip("the browser check: no chromium installed");
    }

    // A restarted receiver shows the same losses: they come from the manifest.
    assert!(rig.receiver.stop().success());
    let key = rig.key.clone().expect("keyed");
    let mut again = Proc::start(
        rig.dir.path(),
        "receiver-again",
        &bin("checkvalve-receive"),
        &[
            "--bind".into(),
            rig.receiver_addr.clone(),
            "--out".into(),
            rig.out.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
    );
    checkvalve_tests::wait_for_log(&again, " receiving", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(&addr, "GET", "/api/live.json");
        let api: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if api["running"] == true && api["live"]["pid"] == again.pid().expect("running") {
            assert_eq!(api["live"]["tally"]["lost"], lost, "{api}");
            let kinds = api["alarms"].to_string();
            assert!(kinds.contains("files_lost"), "{api}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted receiver never showed: {api}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, page) = http(&addr, "GET", "/");
    assert!(page.contains(r#"data-kind="files_lost""#), "{page}");
    assert!(again.stop().success());
    assert!(status.stop().success());
    rig.stop_sim();
}
