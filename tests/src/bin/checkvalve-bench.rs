//! End-to-end benchmark: the real release binaries on loopback, case by case, beside the plain-UDP
//! ceiling of the same machine measured in the same run.
//!
//! ```sh
//! cargo run --release -p checkvalve-tests --bin checkvalve-bench -- [--size 1G] [--runs 10]
//! ```
//!
//! Each case prints goodput (file bytes from the sender's start to the last publication), files/s,
//! datagrams/s, CPU-seconds per GiB and peak RSS of each process, datagrams dropped by the kernel
//! (what a hop sent and the next did not receive) and by the receiver, and whether every file
//! arrived intact.

use std::collections::HashMap;
use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use checkvalve_tests::{Outcome, Status, write_file};
use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// Benchmark the transfer pair end to end on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Size of the large file.
    #[arg(long, default_value = "1G", value_parser = checkvalve_common::units::parse_size)]
    size: u64,
    /// Runs of the unthrottled cases (`max1400`, `auth1400`) and of `loss5` (seeds 5, 6, ...).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sender rate of the `max1400`, `max8900`, `small` and `loss5` cases.
    #[arg(long, default_value = "max")]
    rate: String,
    /// Cases to run (comma-separated): ceiling, max1400, auth1400 (max1400 with a key: every
    /// datagram authenticated), max8900, small, loss5, stall; records (record-to-file latency at
    /// 1,000 and 50,000 records/s, alone and beside an unthrottled transfer of the large file,
    /// and the highest rate sustained).
    #[arg(long, default_value = "ceiling,max1400,max8900,small,loss5,stall")]
    cases: String,
    /// Seconds each `records` case feeds records.
    #[arg(long, default_value_t = 10)]
    record_secs: u64,
    /// Scratch folder (sources and outputs; needs twice the file size free).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the scratch folder (logs and manifests of every case) and print its path.
    #[arg(long)]
    keep: bool,
}

/// CPU time and peak memory of a process, sampled from /proc while it runs.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu_s: f64,
    peak_kib: u64,
}

fn sample(pid: u32, u: &mut Usage) {
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        if let Some(rest) = stat.rsplit(')').next() {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 13 {
                let ticks: u64 = f[11].parse().unwrap_or(0) + f[12].parse().unwrap_or(0);
                u.cpu_s = ticks as f64 / 100.0;
            }
        }
    }
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(v) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    {
        u.peak_kib = v;
    }
}

struct Running {
    child: Child,
    usage: Usage,
    log: PathBuf,
}

impl Running {
    fn start(bin: &Path, args: &[String], log: PathBuf) -> Running {
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Running {
            child,
            usage: Usage::default(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Samples usage; true while running.
    fn poll(&mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            sample(self.child.id(), &mut self.usage);
        }
        running
    }

    fn stop(mut self) -> (Usage, String) {
        self.poll();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sample(self.child.id(), &mut self.usage);
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (
            self.usage,
            fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    line[at..].split(' ').next()
}

/// The count `name` in the last line of `log` holding `marker` (0 if none).
fn last_count(log: &str, marker: &str, name: &str) -> u64 {
    log.lines()
        .rfind(|l| l.contains(marker))
        .and_then(|l| field(l, name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One case: what to send and how.
struct Case {
    name: String,
    files: Vec<(PathBuf, [u8; 32])>,
    src: PathBuf,
    bytes: u64,
    sender: Vec<String>,
    receiver: Vec<String>,
    sim: Option<Vec<String>>,
    stalls: Vec<(Duration, Duration)>,
}

struct Bins {
    send: PathBuf,
    receive: PathBuf,
    sim: PathBuf,
}

fn bins() -> Bins {
    let dir = std::env::current_exe()
        .expect("exe")
        .parent()
        .expect("dir")
        .to_path_buf();
    checkvalve_tests::build_programs("release");

    Bins {
        send: dir.join("checkvalve-send"),
        receive: dir.join("checkvalve-receive"),
        sim: dir.join("checkvalve-sim"),
    }
}

fn wait_bind(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return field(line, "bind").expect("bind=").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_case(b: &Bins, work: &Path, case: &Case) -> String {
    let dir = work.join(&case.name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join("out");
    // Cases without a key run unauthenticated, said explicitly, so that their figures compare
    // with the earlier ones; `auth1400` measures the keyed pair.
    let keyed = case.sender.iter().any(|a| a == "--key");
    let opt_out = (!keyed).then(|| "--allow-unauthenticated".to_string());
    let recv_args: Vec<String> = ["--bind", "127.0.0.1:0", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .chain(["--stats-interval".into(), "1h".into()])
        .chain(case.receiver.iter().cloned())
        .chain(opt_out.clone())
        .collect();
    let mut receiver = Running::start(&b.receive, &recv_args, dir.join("receiver.log"));
    let raddr = wait_bind(&dir.join("receiver.log"), " receiving");
    let mut sim = case.sim.as_ref().map(|extra| {
        let args: Vec<String> = ["--bind", "127.0.0.1:0", "--to", &raddr]
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
            .collect();
        Running::start(&b.sim, &args, dir.join("sim.log"))
    });
    let to = match &sim {
        Some(_) => wait_bind(&dir.join("sim.log"), " forwarding"),
        None => raddr,
    };
    let mut args = vec!["--to".to_string(), to];
    args.extend(case.sender.iter().cloned());
    args.extend(opt_out);
    args.push(case.src.display().to_string());
    let started = Instant::now();
    let mut sender = Running::start(&b.send, &args, dir.join("sender.log"));
    let manifest = out.join(".checkvalve/manifest");
    let mut stalls = case.stalls.clone();
    let deadline = started + Duration::from_secs(600);
    let mut finished = None;
    let mut sender_done: Option<Instant> = None;
    loop {
        if !sender.poll() && sender_done.is_none() {
            sender_done = Some(Instant::now());
        }
        receiver.poll();
        if let Some(s) = sim.as_mut() {
            s.poll();
        }
        if let Some(&(at, len)) = stalls.first()
            && started.elapsed() >= at
        {
            stalls.remove(0);
            let pid = Pid::from_raw(receiver.pid() as i32);
            let _ = kill(pid, Signal::SIGSTOP);
            std::thread::sleep(len);
            let _ = kill(pid, Signal::SIGCONT);
        }
        let o = Outcome::read(&manifest);
        if o.total() >= case.files.len() {
            finished = Some(started.elapsed());
            break;
        }
        // The sender is done and nothing arrived for the object timeout and more: give up.
        if sender_done.is_some_and(|t| t.elapsed() > Duration::from_secs(15))
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = finished.unwrap_or_else(|| started.elapsed());
    while sender.poll() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (su, slog) = sender.stop();
    let (ru, rlog) = receiver.stop();
    let (sim_usage, sim_log) = match sim.map(Running::stop) {
        Some((u, log)) => (Some(u), Some(log)),
        None => (None, None),
    };
    let o = Outcome::read(&manifest);
    let want: HashMap<String, [u8; 32]> = case
        .files
        .iter()
        .map(|(p, d)| {
            let rel = p
                .strip_prefix(case.src.parent().expect("parent"))
                .expect("rel");
            (rel.display().to_string(), *d)
        })
        .collect();
    let intact = o.delivered.len() == want.len()
        && o.records
            .iter()
            .filter(|r| r.status == Status::Delivered)
            .all(|r| {
                let path = r.path.as_deref().unwrap_or_default();
                let hex: String = want
                    .get(path)
                    .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                    .unwrap_or_default();
                r.sha256.as_deref() == Some(hex.as_str())
            });
    let datagrams = last_count(&slog, " done ", "datagrams");
    let stat = |name: &str| last_count(&rlog, " stats ", name);
    let recv_dropped = stat("dropped_behind");
    // The kernel's drops, per datagram, from what each hop counted: its own counters
    // (`RcvbufErrors`, a socket's drop count) count a coalesced run of up to 64 datagrams once.
    let received = stat("datagrams") + recv_dropped;
    let kernel_drops = match &sim_log {
        Some(log) => {
            let sim = |name: &str| last_count(log, " stats ", name);
            datagrams.saturating_sub(sim("received")) + sim("forwarded").saturating_sub(received)
        }
        None => datagrams.saturating_sub(received),
    };
    let over_budget = stat("over_budget");
    let secs = elapsed.as_secs_f64();
    let gib = case.bytes as f64 / f64::from(1u32 << 30);
    // Goodput and files/s mean something only when everything arrived.
    let per_s = |x: f64| {
        if intact {
            format!("{:>8.1}", x / secs)
        } else {
            format!("{:>8}", "-")
        }
    };
    let mut line = format!(
        "{:<9} {:>4} {} MB/s {} files/s {:>9.0} dgram/s | CPU-s/GiB send {:>5.2} recv {:>5.2}",
        case.name,
        if intact { "OK" } else { "LOST" },
        per_s(case.bytes as f64 / 1e6),
        per_s(o.delivered.len() as f64),
        datagrams as f64 / secs,
        su.cpu_s / gib,
        ru.cpu_s / gib,
    );
    if let Some(u) = sim_usage {
        line += &format!(" sim {:>5.2}", u.cpu_s / gib);
    }
    line += &format!(
        " | peak RSS send {:>4} MiB recv {:>4} MiB | drops kernel {kernel_drops} receiver {recv_dropped} over budget {over_budget} | delivered {}/{} lost {}",
        su.peak_kib / 1024,
        ru.peak_kib / 1024,
        o.delivered.len(),
        want.len(),
        o.lost_named.len() as u64 + o.lost_unnamed,
    );
    line
}

/// Plain UDP through loopback, no FEC and no files: one thread sends as fast as it can, another
/// receives and counts, for three seconds.
fn ceiling(len: usize) -> f64 {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBufForce, &(64 << 20));
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let to = rx.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blaster = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let buf = vec![7u8; len];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tx.send_to(&buf, to);
            }
        })
    };
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = rx.recv(&mut buf) {
            bytes += n as u64;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = blaster.join();
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// iperf3's received rate (bytes/s), when iperf3 is installed.
fn iperf3(len: usize) -> Option<f64> {
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            "5299",
            "-u",
            "-b",
            "0",
            "-t",
            "3",
            "-J",
            "-l",
        ])
        .arg(len.to_string())
        .output()
        .ok();
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out?.stdout).ok()?;
    let sum = &v["end"]["sum"];
    let bytes = sum["bytes"].as_f64()?;
    let lost = sum["lost_percent"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64()?;
    Some(bytes * (1.0 - lost / 100.0) / secs)
}

fn digest(path: &Path) -> [u8; 32] {
    Sha256::digest(fs::read(path).expect("read")).into()
}

fn main() {
    let args = Args::parse();
    let b = bins();
    let scratch = tempfile::Builder::new()
        .prefix("checkvalve-bench")
        .tempdir_in(args.work.clone().unwrap_or_else(std::env::temp_dir))
        .expect("scratch");
    let work = scratch.path().to_path_buf();
    let work = work.as_path();
    if args.keep {
        println!("scratch: {}", scratch.path().display());
    }
    let cases: Vec<&str> = args.cases.split(',').map(str::trim).collect();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {}; kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu.split(':').nth(1).unwrap_or("").trim(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut ceilings = HashMap::new();
    if cases.contains(&"ceiling") {
        for len in [1472usize, 8972] {
            let own = ceiling(len);
            let ip = iperf3(len);
            println!(
                "ceiling   plain UDP {len:>5} B datagrams: own blast {:.1} MB/s received{}",
                own / 1e6,
                ip.map(|v| format!(", iperf3 {:.1} MB/s", v / 1e6))
                    .unwrap_or_else(|| ", iperf3 not installed".into())
            );
            // The higher of the two: a ceiling measured low (iperf3 has been seen to report a
            // fiftieth of the own blast with large datagrams) must not flatter the ratio.
            ceilings.insert(len, ip.map_or(own, |ip| ip.max(own)));
        }
    }
    let big_src = work.join("big");
    let big = big_src.join("historian-export.bin");
    let needs_big = cases
        .iter()
        .any(|c| ["max1400", "auth1400", "max8900", "loss5", "stall"].contains(c));
    let big_digest = if needs_big {
        write_file(&big, usize::try_from(args.size).expect("size"), 1);
        digest(&big)
    } else {
        [0; 32]
    };
    let one_big = |name: &str, sender: &[&str], sim: Option<&[&str]>, stalls| Case {
        name: name.to_string(),
        files: vec![(big.clone(), big_digest)],
        src: big.clone(),
        bytes: args.size,
        sender: sender.iter().map(|s| s.to_string()).collect(),
        receiver: Vec::new(),
        sim: sim.map(|s| s.iter().map(|x| x.to_string()).collect()),
        stalls,
    };
    let ratio = |line: &str, len: usize| {
        let mbps: f64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        ceilings
            .get(&len)
            .filter(|_| mbps > 0.0)
            .map(|c| format!(" | {:.2}x ceiling", mbps * 1e6 / c))
            .unwrap_or_default()
    };
    if cases.contains(&"max1400") {
        for run in 1..=args.runs {
            let c = one_big(
                &format!("max1400-{run}"),
                &["--rate", &args.rate],
                None,
                vec![],
            );
            let line = run_case(&b, work, &c);
            println!("{line}{}", ratio(&line, 1472));
        }
    }
    if cases.contains(&"auth1400") {
        let key = work.join("bench.key");
        let _ = fs::remove_file(&key);
        let made = std::process::Command::new(&b.send)
            .args(["keygen", "--id", "1", "--out"])
            .arg(&key)
            .status()
            .expect("keygen");
        assert!(made.success(), "keygen failed");
        let key = key.display().to_string();
        for run in 1..=args.runs {
            let mut c = one_big(
                &format!("auth1400-{run}"),
                &["--rate", &args.rate, "--key", &key],
                None,
                vec![],
            );
            c.receiver = vec!["--key".into(), key.clone()];
            let line = run_case(&b, work, &c);
            println!("{line}{}", ratio(&line, 1472));
        }
    }
    if cases.contains(&"max8900") {
        let c = one_big(
            "max8900",
            &[
                "--rate",
                &args.rate,
                "--mtu",
                "9000",
                "--shard-size",
                "8900",
            ],
            None,
            vec![],
        );
        let line = run_case(&b, work, &c);
        println!("{line}{}", ratio(&line, 8972));
    }
    if cases.contains(&"small") {
        let src = work.join("src-small/exports");
        let mut files = Vec::new();
        for i in 0..1000u64 {
            let p = src.join(format!("d{}/f{i:04}.bin", i % 10));
            write_file(&p, 64 << 10, 100 + i);
            files.push((p.clone(), digest(&p)));
        }
        let c = Case {
            name: "small".into(),
            files,
            src: src.clone(),
            bytes: 1000 * (64 << 10),
            sender: vec!["--rate".into(), args.rate.clone()],
            receiver: Vec::new(),
            sim: None,
            stalls: vec![],
        };
        println!("{}", run_case(&b, work, &c));
    }
    if cases.contains(&"loss5") {
        for run in 1..=args.runs {
            let seed = (4 + run).to_string();
            let c = one_big(
                &format!("loss5-{run}"),
                &["--rate", &args.rate],
                Some(&["--loss", "5%", "--seed", &seed]),
                vec![],
            );
            println!("{}", run_case(&b, work, &c));
        }
    }
    if cases.contains(&"stall") {
        let stalls = vec![
            (Duration::from_secs(2), Duration::from_millis(800)),
            (Duration::from_secs(5), Duration::from_millis(800)),
        ];
        let c = one_big("stall", &["--rate", "1G"], None, stalls);
        println!("{}", run_case(&b, work, &c));
    }
    if cases.contains(&"records") {
        if !big.exists() {
            write_file(&big, usize::try_from(args.size).expect("size"), 1);
        }
        let secs = Duration::from_secs(args.record_secs);
        for (rate, bulk) in [
            (Some(1_000.0), false),
            (Some(50_000.0), false),
            (Some(1_000.0), true),
            (Some(50_000.0), true),
            (None, false),
        ] {
            println!(
                "{}",
                records_case(&b, work, rate, bulk.then_some(big.as_path()), secs)
            );
        }
    }
    if args.keep {
        let _ = scratch.keep();
    }
}

/// Bytes of every benchmark record, its newline included.
const RECORD_BYTES: usize = 200;

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Record-to-file latency: a keyed sender service with a TCP stream input (and, with `bulk`, a
/// spool into which the large file is put a second in), the receiver, and a feeder writing
/// 200-byte records stamped with their time at `rate` records/s (`None`: as fast as the input
/// takes them) for `secs`; the channel file is tailed as it grows and each record's latency is
/// now minus its stamp. Beside a transfer, the percentiles count only the records fed while the
/// file was crossing (from its first datagram to its last, by the manifest).
fn records_case(
    b: &Bins,
    work: &Path,
    rate: Option<f64>,
    bulk: Option<&Path>,
    secs: Duration,
) -> String {
    use std::io::{Read, Write};
    let name = format!(
        "records-{}{}",
        rate.map_or("max".to_string(), |r| format!("{}k", r / 1000.0)),
        if bulk.is_some() { "-bulk" } else { "" }
    );
    let dir = work.join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let key = dir.join("bench.key");
    let made = Command::new(&b.send)
        .args(["keygen", "--id", "1", "--out"])
        .arg(&key)
        .status()
        .expect("keygen");
    assert!(made.success(), "keygen failed");
    let out = dir.join("out");
    let recv_args: Vec<String> = vec![
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--out".into(),
        out.display().to_string(),
        "--stats-interval".into(),
        "1h".into(),
        "--key".into(),
        key.display().to_string(),
    ];
    let mut receiver = Running::start(&b.receive, &recv_args, dir.join("receiver.log"));
    let raddr = wait_bind(&dir.join("receiver.log"), " receiving");
    let spool = dir.join("spool");
    fs::create_dir_all(&spool).expect("spool");
    let send_args: Vec<String> = vec![
        "--to".into(),
        raddr,
        "--rate".into(),
        "max".into(),
        "--key".into(),
        key.display().to_string(),
        "--state".into(),
        dir.join("state").display().to_string(),
        "--watch".into(),
        spool.display().to_string(),
        "--settle".into(),
        "1s".into(),
        "--stream".into(),
        "bench=tcp://127.0.0.1:0".into(),
    ];
    let mut sender = Running::start(&b.send, &send_args, dir.join("sender.log"));
    let input = wait_bind(
        &dir.join("sender.log"),
        "stream input listening (tcp) channel=bench",
    );
    // The feeder, on its own thread: stamped records at the rate, or as fast as TCP takes them.
    let fed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = {
        let fed = std::sync::Arc::clone(&fed);
        std::thread::spawn(move || {
            let mut conn =
                std::io::BufWriter::new(std::net::TcpStream::connect(&input).expect("input"));
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < secs {
                let due = rate.map_or(n + 1000, |r| (start.elapsed().as_secs_f64() * r) as u64 + 1);
                while n < due {
                    let mut line = format!("{:016} {n:010} ", now_us());
                    line.extend(std::iter::repeat_n('x', RECORD_BYTES - 1 - line.len()));
                    line.push('\n');
                    conn.write_all(line.as_bytes()).expect("feed");
                    n += 1;
                }
                conn.flush().expect("feed");
                fed.store(n, std::sync::atomic::Ordering::Relaxed);
                if rate.is_some() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            conn.flush().expect("feed");
            fed.store(n, std::sync::atomic::Ordering::Relaxed);
            n
        })
    };
    let started = Instant::now();
    let mut bulk_placed = false;
    // Tail the channel file: (stamp, latency) of every record, and the markers' missing counts.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut missing = 0u64;
    let mut file: Option<fs::File> = None;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: Option<u64> = None;
    let deadline = Instant::now() + secs + Duration::from_secs(120);
    loop {
        if let (Some(src), false) = (bulk, bulk_placed)
            && started.elapsed() >= Duration::from_secs(1)
        {
            fs::hard_link(src, spool.join("bulk.bin"))
                .or_else(|_| fs::copy(src, spool.join("bulk.bin")).map(|_| ()))
                .expect("bulk file into the spool");
            bulk_placed = true;
        }
        if file.is_none() {
            file = fs::read_dir(out.join("bench"))
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .and_then(|e| fs::File::open(e.path()).ok());
        }
        if let Some(f) = file.as_mut() {
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let now = now_us();
                pending.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while let Some(end) = pending[at..].iter().position(|&c| c == b'\n') {
                    let line = &pending[at..at + end];
                    at += end + 1;
                    if line.starts_with(b"#") {
                        missing += std::str::from_utf8(line)
                            .ok()
                            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("missing=")))
                            .and_then(|m| m.parse::<u64>().ok())
                            .unwrap_or(0);
                    } else if let Some(stamp) = std::str::from_utf8(&line[..16.min(line.len())])
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        seen.push((stamp, now.saturating_sub(stamp)));
                    }
                }
                pending.drain(..at);
            }
        }
        if total.is_none() && feeder.is_finished() {
            total = Some(fed.load(std::sync::atomic::Ordering::Relaxed));
        }
        sender.poll();
        receiver.poll();
        if total.is_some_and(|t| seen.len() as u64 + missing >= t) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = feeder.join().unwrap_or(0);
    let feed_secs = secs.as_secs_f64();
    // With a transfer: only the records fed while it crossed.
    let window = bulk.and_then(|_| {
        let o = Outcome::read(&out.join(".checkvalve/manifest"));
        let r = o.records.iter().find(|r| r.status == Status::Delivered)?;
        let us = |t: &Option<String>| -> Option<u64> {
            let t = humantime::parse_rfc3339(t.as_deref()?).ok()?;
            Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros() as u64)
        };
        Some((us(&r.first_datagram)?, us(&r.last_datagram)?))
    });
    let mut lat: Vec<u64> = seen
        .iter()
        .filter(|(stamp, _)| window.is_none_or(|(a, z)| (a..=z).contains(stamp)))
        .map(|&(_, l)| l)
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            return "-".into();
        }
        let i = ((lat.len() - 1) as f64 * p).round() as usize;
        format!("{:.1}", lat[i] as f64 / 1000.0)
    };
    let (_, _) = sender.stop();
    let (_, _) = receiver.stop();
    let window_text = match (bulk, window) {
        (Some(_), Some((a, z))) => format!(
            " | beside the transfer: {:.1} s of it, {} records",
            (z - a) as f64 / 1e6,
            lat.len()
        ),
        (Some(_), None) => " | the transfer did not arrive".to_string(),
        _ => String::new(),
    };
    format!(
        "{name:<18} {} fed {total} ({:.0}/s) written {} missing {missing} | latency ms p50 {} p99 {} max {}{window_text}",
        if seen.len() as u64 == total {
            "OK  "
        } else {
            "LOST"
        },
        total as f64 / feed_secs,
        seen.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    )
}
