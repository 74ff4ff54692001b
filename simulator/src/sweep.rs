//! The sweep (alias `qualify`): runs the real sender and receiver through the link model over
//! every combination of link (loss rate × burst length, and scenario timelines), sender rate and
//! shard size, each repeated; writes a CSV, an SVG chart of delivery and goodput against loss,
//! and one artifact (`qualification.json`) with the programs' versions, the host, the whole
//! configuration and every point.

pub use checkvalve_formats::qualification::Point;
use checkvalve_formats::qualification::{self as q, Qualification, ScenarioFile};
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use crate::forward::{Forwarder, Options};
use crate::link::{LinkConfig, Loss, Schedule};

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Loss rates (fractions), each tried with each burst length.
    pub losses: Vec<f64>,
    /// Mean burst lengths; `1` means independent loss.
    pub bursts: Vec<f64>,
    /// Scenario files, each a link of its own (its timeline played once per point).
    pub scenarios: Vec<PathBuf>,
    /// Sender rates, as the sender takes them.
    pub rates: Vec<String>,
    /// Sender shard sizes; empty for the sender's default.
    pub shard_sizes: Vec<u16>,
    /// Runs of every combination, each with a seed of its own.
    pub repeats: u32,
    /// Sender FEC setting, `K:M`.
    pub fec: String,
    /// Files in the test tree.
    pub files: usize,
    /// Largest file in the tree (sizes are spread log-uniformly up to it).
    pub max_file: u64,
    /// Folder for the CSV, the SVG, the artifact and the logs of each point.
    pub out: PathBuf,
    /// Seed of the link model and of the test tree; point `n` uses `seed + n`.
    pub seed: u64,
    /// Receiver object timeout: how long a point waits for lost files to be declared.
    pub object_timeout: Duration,
    /// Folder holding `checkvalve-send` and `checkvalve-receive`.
    pub bin_dir: PathBuf,
}

/// One link of the sweep.
#[derive(Debug, Clone)]
enum Link {
    /// A constant loss model.
    Loss { loss: f64, burst: f64 },
    /// A scenario file's timeline, by the file's name.
    Scenario { name: String, schedule: Schedule },
}

impl Link {
    fn label(&self) -> String {
        match self {
            Link::Loss { loss, burst } => {
                format!(
                    "loss {}% burst {burst}",
                    checkvalve_host::logging::round(loss * 100.0, 2)
                )
            }
            Link::Scenario { name, .. } => name.clone(),
        }
    }
}

/// CSV header, matching [`csv_row`]: the first thirteen columns as they always were, the
/// combination's columns after them.
pub const CSV_HEADER: &str = "loss_pct,burst,fec,files,delivered,delivery_ratio,bytes,bytes_delivered,seconds,goodput_mbps,datagrams,measured_loss_pct,longest_burst,link,rate,shard_size,repeat,seed,rounds";

fn csv_row(p: &Point, fec: &str) -> String {
    format!(
        "{:.2},{},{},{},{},{:.4},{},{},{:.3},{:.1},{},{:.3},{},{},{},{},{},{},{}",
        p.loss * 100.0,
        p.burst,
        fec,
        p.files,
        p.delivered,
        p.delivery_ratio(),
        p.bytes,
        p.bytes_delivered,
        p.seconds,
        p.goodput_mbps,
        p.datagrams,
        p.measured_loss * 100.0,
        p.longest_burst,
        p.link.replace(',', ";"),
        p.rate,
        p.shard_size.map(|s| s.to_string()).unwrap_or_default(),
        p.repeat,
        p.seed,
        p.rounds,
    )
}

fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the child on drop, so an error never leaves a receiver behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the seeded test tree; returns (relative path, content) of every file.
fn make_tree(
    root: &Path,
    files: usize,
    max_file: u64,
    seed: u64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let max_exp = (max_file.max(2) as f64).log2();
    for i in 0..files {
        // Spread sizes evenly in log scale so small and large files are both represented.
        let exp = if files > 1 {
            max_exp * i as f64 / (files - 1) as f64
        } else {
            max_exp
        };
        let len = 2f64.powf(exp) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let rel = format!("tree/f{i:03}.bin");
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().expect("parent"))?;
        fs::write(&path, &data)?;
        out.push((rel, data));
    }
    Ok(out)
}

/// One combination of the sweep.
struct Combination<'a> {
    link: &'a Link,
    rate: &'a str,
    shard_size: Option<u16>,
    repeat: u32,
}

/// Hard-links the tree into `src/tree-ROUND/`, so that a further round arrives under names of
/// its own.
fn link_round(src: &Path, tree: &[(String, Vec<u8>)], round: u32) -> Result<PathBuf> {
    let dir = src.join(format!("tree-{round}"));
    let _ = fs::remove_dir_all(&dir);
    for (rel, _) in tree {
        let name = Path::new(rel).file_name().context("file name")?;
        fs::create_dir_all(&dir)?;
        fs::hard_link(src.join(rel), dir.join(name))?;
    }
    Ok(dir)
}

/// Runs one point of the sweep.
fn run_point(
    o: &SweepOptions,
    src: &Path,
    tree: &[(String, Vec<u8>)],
    c: &Combination<'_>,
    n: usize,
) -> Result<Point> {
    let work = o.out.join(format!("point-{n:03}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let recv_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    // Authenticated, as a plant link is: a key of the point's own, held by both ends.
    let key = work.join("link.key");
    let made = Command::new(o.bin_dir.join("checkvalve-send"))
        .args(["keygen", "--id", "1", "--out"])
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("keygen.log"))?)
        .status()
        .context("cannot run checkvalve-send keygen")?;
    if !made.success() {
        bail!(
            "checkvalve-send keygen failed (see {})",
            work.join("keygen.log").display()
        );
    }
    let receiver = Command::new(o.bin_dir.join("checkvalve-receive"))
        .args(["--bind", &recv_addr.to_string(), "--out"])
        .arg(work.join("out"))
        .arg("--key")
        .arg(&key)
        .args([
            "--object-timeout",
            &format!("{}ms", o.object_timeout.as_millis()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("receiver.log"))?)
        .spawn()
        .context("cannot start checkvalve-receive")?;
    let _receiver = Guard(receiver);

    let (schedule, loss, burst) = match c.link {
        Link::Loss { loss, burst } => {
            let model = if *burst > 1.0 {
                Loss::bursty(*loss, *burst)
            } else {
                Loss::Independent(*loss)
            };
            let config = LinkConfig {
                loss: model,
                ..LinkConfig::default()
            };
            (Schedule::constant(config), *loss, *burst)
        }
        Link::Scenario { schedule, .. } => (schedule.clone(), 0.0, 0.0),
    };
    // A scenario's timeline is covered whole: the tree is sent again until it ends.
    let until = schedule.end();
    let mut schedule = schedule;
    if until.is_some() {
        // Then a clean link carries the last round to its end, rather than the link ending
        // under it (what it delivers is then the timeline's doing, not the point's end).
        schedule.phases.push(crate::link::Phase {
            name: "after the timeline".into(),
            duration: None,
            config: LinkConfig::default(),
        });
    }
    let seed = o.seed + n as u64;
    let forwarder = Forwarder::bind(Options {
        bind: "127.0.0.1:0".parse()?,
        to: recv_addr,
        schedule,
        seed,
        pcap: None,
        stats_every: None,
        stats_json: false,
        run_for: None,
    })?;
    let sim_addr = forwarder.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let link = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || forwarder.run(&stop))
    };
    // Let the receiver bind before traffic starts.
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let mut rounds = 0u32;
    let mut sent: Vec<(PathBuf, &[u8])> = Vec::new();
    loop {
        let (dir, prefix) = if rounds == 0 {
            (src.join("tree"), "tree".to_string())
        } else {
            (link_round(src, tree, rounds)?, format!("tree-{rounds}"))
        };
        let mut sender = Command::new(o.bin_dir.join("checkvalve-send"));
        sender
            .args([
                "--to",
                &sim_addr.to_string(),
                "--rate",
                c.rate,
                "--fec",
                &o.fec,
            ])
            .arg("--key")
            .arg(&key);
        if let Some(shard) = c.shard_size {
            // The shard size is the point's: the loopback link carries any datagram.
            sender.args(["--shard-size", &shard.to_string(), "--mtu", "65535"]);
        }
        let log = work.join(format!("sender-{rounds}.log"));
        let status = sender
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .status()
            .context("cannot run checkvalve-send")?;
        if !status.success() {
            bail!("sender failed ({status}); see {}", log.display());
        }
        for (rel, data) in tree {
            let name = Path::new(rel).file_name().context("file name")?;
            sent.push((Path::new(&prefix).join(name), data));
        }
        rounds += 1;
        if until.is_none_or(|end| started.elapsed() >= end) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    // Wait until every file arrived, or the receiver had time to declare the rest lost.
    let deadline = Instant::now() + o.object_timeout + Duration::from_secs(3);
    let intact = || -> (usize, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for (rel, data) in &sent {
            if fs::read(work.join("out").join(rel)).is_ok_and(|got| &got == data) {
                n += 1;
                bytes += data.len() as u64;
            }
        }
        (n, bytes)
    };
    let (delivered, bytes_delivered) = loop {
        let (n, b) = intact();
        if n == sent.len() || Instant::now() >= deadline {
            break (n, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = link
        .join()
        .map_err(|_| anyhow::anyhow!("link thread panicked"))??;
    let bytes: u64 = sent.iter().map(|(_, d)| d.len() as u64).sum();
    Ok(Point {
        link: c.link.label(),
        loss,
        burst,
        rate: c.rate.to_owned(),
        shard_size: c.shard_size,
        repeat: c.repeat,
        seed,
        rounds,
        files: sent.len(),
        delivered,
        bytes,
        bytes_delivered,
        seconds,
        goodput_mbps: bytes_delivered as f64 * 8.0 / seconds / 1e6,
        datagrams: report.total.received,
        measured_loss: report.total.dropped as f64 / report.total.received.max(1) as f64,
        longest_burst: report.total.longest_burst,
    })
}

/// A program's `--version` line.
fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn host() -> q::Host {
    let read = |p: &str| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    q::Host {
        name: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The links to sweep: every loss rate with every burst length, then each scenario.
fn links(o: &SweepOptions) -> Result<(Vec<Link>, Vec<ScenarioFile>)> {
    let mut links = Vec::new();
    for &burst in &o.bursts {
        for &loss in &o.losses {
            links.push(Link::Loss { loss, burst });
        }
    }
    let mut files = Vec::new();
    for path in &o.scenarios {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        let scenario =
            crate::scenario::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario")
            .to_owned();
        links.push(Link::Scenario {
            name,
            schedule: scenario.schedule,
        });
        files.push(ScenarioFile {
            path: path.display().to_string(),
            text,
        });
    }
    Ok((links, files))
}

/// Runs the whole sweep; writes `sweep.csv`, `sweep.svg` and `qualification.json` into `o.out`
/// and returns the artifact.
pub fn run(o: &SweepOptions) -> Result<Qualification> {
    fs::create_dir_all(&o.out)?;
    let (links, scenarios) = links(o)?;
    let src = o.out.join("source");
    let _ = fs::remove_dir_all(&src);
    let tree = make_tree(&src, o.files, o.max_file, o.seed)?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    let shard_sizes: Vec<Option<u16>> = if o.shard_sizes.is_empty() {
        vec![None]
    } else {
        o.shard_sizes.iter().copied().map(Some).collect()
    };
    let started = now_rfc3339();
    let mut points = Vec::new();
    let mut n = 0;
    for link in &links {
        for rate in &o.rates {
            for &shard_size in &shard_sizes {
                for repeat in 0..o.repeats.max(1) {
                    let c = Combination {
                        link,
                        rate,
                        shard_size,
                        repeat,
                    };
                    let p = run_point(o, &src, &tree, &c, n)?;
                    info!(
                        link = %p.link,
                        rate = %p.rate,
                        shard_size = ?p.shard_size,
                        repeat,
                        delivered = p.delivered,
                        files = p.files,
                        goodput_mbps = checkvalve_host::logging::round(p.goodput_mbps, 1),
                        "point"
                    );
                    let _ = writeln!(csv, "{}", csv_row(&p, &o.fec));
                    points.push(p);
                    n += 1;
                }
            }
        }
    }
    fs::write(o.out.join("sweep.csv"), csv)?;
    let plotted: Vec<Point> = points
        .iter()
        .filter(|p| !p.is_scenario())
        .cloned()
        .collect();
    crate::plot::draw(
        &plotted,
        &format!("FEC {}", o.fec),
        &o.out.join("sweep.svg"),
    )?;
    let artifact = Qualification {
        format: q::FORMAT,
        started,
        ended: now_rfc3339(),
        versions: q::Versions {
            sim: version_of(&std::env::current_exe()?),
            send: version_of(&o.bin_dir.join("checkvalve-send")),
            receive: version_of(&o.bin_dir.join("checkvalve-receive")),
        },
        host: host(),
        config: q::SweepConfig {
            losses: o.losses.clone(),
            bursts: o.bursts.clone(),
            scenarios,
            rates: o.rates.clone(),
            shard_sizes: o.shard_sizes.clone(),
            fec: o.fec.clone(),
            files: o.files,
            max_file: o.max_file,
            repeats: o.repeats.max(1),
            seed: o.seed,
            object_timeout_ms: o.object_timeout.as_millis() as u64,
        },
        points_with_loss: points.iter().filter(|p| p.delivered < p.files).count(),
        points,
    };
    let path = o.out.join(q::FILE);
    fs::write(&path, serde_json::to_string_pretty(&artifact)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(artifact)
}
