//! End-to-end harness: builds and starts the real binaries on loopback, makes real trees of files,
//! and stops everything it started, whatever happens to the test.

pub use checkvalve_formats::manifest::{Record, Status};
use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Shard length and block size of the default FEC setting, for sizes around their edges.
pub const SHARD: usize = 1400;
/// Bytes per full content block at the defaults (64 x 1,400).
pub const BLOCK: usize = 64 * SHARD;

/// True for a variable cargo or nextest sets for a test that describes the test's own package.
/// Build scripts that watch them (ring's reads `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR` and
/// `OUT_DIR`) would see them change between a build from a test, the setup script's
/// (`.config/nextest.toml`) and a plain `cargo build`, and rebuild everything above them each
/// time, inside a test's time bound.
fn describes_the_test(key: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    const NAMES: [&str; 4] = [
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || NAMES.contains(&key)
}

/// Builds the four programs with cargo profile `profile`; panics if the build fails.
pub fn build_programs(profile: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        if describes_the_test(&key.to_string_lossy()) {
            command.env_remove(&key);
        }
    }
    let status = command
        .args(["build", "--quiet", "--bins", "--profile", profile])
        .args([
            "-p",
            "checkvalve-send",
            "-p",
            "checkvalve-receive",
            "-p",
            "checkvalve-sim",
            "-p",
            "checkvalve-status",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the binaries failed");
}

/// Path of one of the workspace binaries, built on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The test executable lives in target/<profile>/deps; the binaries in target/<profile>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => "dev".to_string(),
        };
        build_programs(&profile);
        profile_dir
    });
    dir.join(name)
}

/// Holds the machine for one end-to-end test at a time.
///
/// Two transfers at once compete for two cores and turn CPU contention into socket-buffer loss.
/// Under `cargo nextest` each test is its own process and the `end-to-end` test group serialises
/// them; under `cargo test` the tests of one binary are threads, and this lock does it.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A UDP port on 127.0.0.1 where nothing listens (held by no one once returned: only for
/// sending into the void, never for binding a program to).
pub fn dead_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// Waits for the line containing `needle` in `proc`'s log and returns its `bind=` address: the
/// programs bind port 0 and say which port they got, so tests never race for a port.
pub fn bound_addr(proc: &Proc, needle: &str, limit: Duration) -> String {
    wait_for_log(proc, needle, limit);
    let log = proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .expect("readiness line");
    // A JSON log line carries it as a field of its own.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(bind) = v["bind"].as_str()
    {
        return bind.to_owned();
    }
    field(line, "bind")
        .unwrap_or_else(|| panic!("no bind= in {line:?}"))
        .to_string()
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
    /// Where its standard error goes.
    pub log: PathBuf,
    /// Where its standard output goes.
    pub out: PathBuf,
}

impl Proc {
    /// Starts `bin` with `args`, logging to files in `dir` named after `tag`.
    pub fn start(dir: &Path, tag: &str, bin: &Path, args: &[String]) -> Proc {
        Proc::start_env(dir, tag, bin, args, &[])
    }

    /// Like [`Proc::start`], with `env` added to its environment.
    pub fn start_env(
        dir: &Path,
        tag: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Proc {
        let log = dir.join(format!("{tag}.log"));
        let out = dir.join(format!("{tag}.out"));
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc {
            child: Some(child),
            log,
            out,
        }
    }

    /// Waits for the process to exit on its own, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}; log:\n{}",
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for a clean exit (at most 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        self.wait(Duration::from_secs(10))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Says that a check cannot run on this machine, and why: SKIPPED where a developer runs the
/// suite, a failure under `CI`, whose machine `.ci/run` gives everything the suite needs (so that
/// CI never passes a check it did not make).
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "under CI this check must run: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Writes `len` seeded random bytes to `path`, creating folders.
pub fn write_file(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    fs::write(path, data).expect("write file");
}

/// Builds a test tree under `root/name`: edge sizes around a shard and a block, nested folders,
/// non-ASCII names, `count` files of log-uniform sizes up to 1 MiB, and one file of `big` bytes.
pub fn make_tree(root: &Path, name: &str, count: usize, big: usize, seed: u64) -> PathBuf {
    let top = root.join(name);
    let edges = [
        0,
        1,
        SHARD - 1,
        SHARD,
        SHARD + 1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
    ];
    for (i, len) in edges.iter().enumerate() {
        write_file(
            &top.join(format!("edges/size-{len}-{i}.bin")),
            *len,
            seed + i as u64,
        );
    }
    write_file(&top.join("données/été/café-☕.csv"), 12_345, seed + 100);
    write_file(&top.join("日本語/ファイル.txt"), 777, seed + 101);
    write_file(&top.join("a/b/c/d/e/deep.log"), 3_000, seed + 102);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..count {
        let len = (2f64.powf(rng.random_range(0.0..20.0))) as usize;
        let dir = format!("bulk/d{}", i % 7);
        write_file(
            &top.join(format!("{dir}/f{i:04}.dat")),
            len,
            seed + 1000 + i as u64,
        );
    }
    if big > 0 {
        write_file(&top.join("big/historian-export.bin"), big, seed + 7);
    }
    top
}

/// How many regular files are under `root` (files vanishing meanwhile are fine: for polling a
/// folder another process empties).
pub fn count_files(root: &Path) -> usize {
    let Ok(rd) = fs::read_dir(root) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Every regular file under `root`, as relative path and SHA-256.
pub fn digest_tree(root: &Path) -> Vec<(String, [u8; 32])> {
    fn visit(base: &Path, dir: &Path, out: &mut Vec<(String, [u8; 32])>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                visit(base, &p, out);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(base)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                // A file another process removes meanwhile (a temporary file, a spooled file
                // once sent) is simply no longer there.
                match fs::read(&p) {
                    Ok(data) => out.push((rel, Sha256::digest(&data).into())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("cannot read {}: {e}", p.display()),
                }
            }
        }
    }
    let mut out = Vec::new();
    visit(root, root, &mut out);
    out.sort();
    out
}

/// The three programs wired together: sender -> simulator -> receiver.
pub struct Rig {
    /// Scratch folder holding sources, output and logs.
    pub dir: tempfile::TempDir,
    /// The receiver's output folder.
    pub out: PathBuf,
    /// The receiver.
    pub receiver: Proc,
    /// The simulator, if any.
    pub sim: Option<Proc>,
    /// Where the sender should send.
    pub send_to: String,
    /// Where the receiver listens.
    pub receiver_addr: String,
    /// The key the rig's receiver holds and its senders get, unless the test chose its own
    /// (`--key`) or opted out (`--allow-unauthenticated`).
    pub key: Option<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

/// Arguments by which a test says how a program authenticates: the rig then adds nothing.
const AUTH_ARGS: [&str; 3] = ["--key", "--allow-unauthenticated", "--config"];

/// The file name of a rig's key in its folder.
pub const RIG_KEY: &str = "rig.key";

/// A new key numbered `id` in `dir` (`checkvalve-send keygen`).
pub fn keygen(dir: &Path, id: u32) -> PathBuf {
    keygen_at(&dir.join(format!("key-{id}")), id)
}

/// A new key numbered `id` written to `key`.
pub fn keygen_at(key: &Path, id: u32) -> PathBuf {
    let key = key.to_path_buf();
    let out = Command::new(bin("checkvalve-send"))
        .args(["keygen", "--id", &id.to_string(), "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

impl Rig {
    /// Starts a receiver, and a simulator in front of it with `sim_args` unless `None`.
    pub fn start(sim_args: Option<&[&str]>, receiver_args: &[&str]) -> Rig {
        Rig::start_with(sim_args, receiver_args, |_| {})
    }

    /// Like [`Rig::start`], calling `prepare` with the output folder path before the receiver starts.
    pub fn start_with(
        sim_args: Option<&[&str]>,
        receiver_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Rig {
        let serial = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        prepare(&out);
        let mut rargs = vec![
            "--bind".to_string(),
            "127.0.0.1:0".into(),
            "--out".into(),
            out.display().to_string(),
            "--stats-interval".into(),
            "1s".into(),
            "--aggregate-interval".into(),
            "1s".into(),
        ];
        rargs.extend(receiver_args.iter().map(|s| s.to_string()));
        // Secure by default, as the programs are: a key unless the test says otherwise.
        let key = (!receiver_args.iter().any(|a| AUTH_ARGS.contains(a)))
            .then(|| keygen_at(&dir.path().join(RIG_KEY), 1));
        if let Some(k) = &key {
            rargs.extend(["--key".to_string(), k.display().to_string()]);
        }
        let receiver = Proc::start(dir.path(), "receiver", &bin("checkvalve-receive"), &rargs);
        let receiver_addr = bound_addr(&receiver, " receiving", Duration::from_secs(20));
        let (sim, send_to) = match sim_args {
            Some(extra) => {
                let mut sargs = vec![
                    "--bind".to_string(),
                    "127.0.0.1:0".into(),
                    "--to".into(),
                    receiver_addr.clone(),
                ];
                sargs.extend(extra.iter().map(|s| s.to_string()));
                let sim = Proc::start(dir.path(), "sim", &bin("checkvalve-sim"), &sargs);
                let at = bound_addr(&sim, " forwarding", Duration::from_secs(20));
                (Some(sim), at)
            }
            None => (None, receiver_addr.clone()),
        };
        Rig {
            dir,
            out,
            receiver,
            sim,
            send_to,
            receiver_addr,
            key,
            _serial: serial,
        }
    }

    /// Starts the sender on `paths` (logging to `tag`.log) and returns it running.
    pub fn start_sender(&self, tag: &str, paths: &[&Path], extra: &[&str]) -> Proc {
        let mut args = vec!["--to".to_string(), self.send_to.clone()];
        // The binaries under test are debug builds: a modest rate unless the test sets one.
        if !extra.contains(&"--rate") {
            args.extend(["--rate".to_string(), "200M".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.iter().any(|a| AUTH_ARGS.contains(a)) {
            args.extend(self.sender_auth());
        }
        args.extend(paths.iter().map(|p| p.display().to_string()));
        Proc::start(self.dir.path(), tag, &bin("checkvalve-send"), &args)
    }

    /// Starts `checkvalve-status` on this rig's state folder; returns it with the address it serves.
    pub fn start_status(&self) -> (Proc, String) {
        let state = self.out.join(".checkvalve");
        let status = Proc::start(
            self.dir.path(),
            "status",
            &bin("checkvalve-status"),
            &[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--state".into(),
                state.display().to_string(),
            ],
        );
        let addr = bound_addr(&status, " serving", Duration::from_secs(20));
        (status, addr)
    }

    /// `args` for a sender of this rig's, with how it authenticates added.
    pub fn sender_args(&self, args: &[String]) -> Vec<String> {
        let mut all = args.to_vec();
        all.extend(self.sender_auth());
        all
    }

    /// How a sender authenticates to this rig's receiver: its key, or the receiver's opt-out.
    pub fn sender_auth(&self) -> Vec<String> {
        match &self.key {
            Some(k) => vec!["--key".into(), k.display().to_string()],
            None => vec!["--allow-unauthenticated".into()],
        }
    }

    /// Runs the sender on `paths` and returns its exit status (bounded by `limit`).
    pub fn send(&self, paths: &[&Path], extra: &[&str], limit: Duration) -> ExitStatus {
        self.start_sender("sender", paths, extra).wait(limit)
    }

    /// The receiver's manifest folder (one file per UTC day).
    pub fn manifest_path(&self) -> PathBuf {
        self.out.join(".checkvalve/manifest")
    }

    /// The outcomes recorded in the manifest so far.
    pub fn outcome(&self) -> Outcome {
        Outcome::read(&self.manifest_path())
    }

    /// Waits until the manifest records `expected` outcomes (files delivered, superseded or lost,
    /// unnamed objects counted one by one), at most `limit`.
    pub fn settle(&self, expected: usize, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            let o = self.outcome();
            if o.total() >= expected {
                return o;
            }
            if Instant::now() >= deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the simulator and returns its JSON counters.
    pub fn stop_sim(&mut self) -> serde_json::Value {
        let sim = self.sim.as_mut().expect("a simulator");
        assert!(
            sim.stop().success(),
            "simulator failed:\n{}",
            tail(&sim.log)
        );
        let text = fs::read_to_string(&sim.out).expect("sim stdout");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad counters {text:?}: {e}"))
    }
}

/// Bytes of the files directly in `dir` (a manifest folder, say); 0 if it does not exist.
pub fn folder_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until `proc`'s log contains `needle`.
pub fn wait_for_log(proc: &Proc, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !proc.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in log within {limit:?}:\n{}",
            tail(&proc.log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the receiver's manifest says it did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Paths delivered, in manifest order.
    pub delivered: Vec<String>,
    /// Paths verified but superseded by newer content.
    pub superseded: Vec<String>,
    /// Paths sent again whose content the share already held.
    pub repeats: Vec<String>,
    /// Paths reported lost by name.
    pub lost_named: Vec<String>,
    /// Objects reported lost without a name (metadata not recovered, or nothing received).
    pub lost_unnamed: u64,
    /// Every outcome record, as parsed.
    pub records: Vec<Record>,
    /// Link and session events (`link_down`, `link_up`, `session_start`, `sender_restart`,
    /// `loss`, `torn`) and retention removals, as parsed.
    pub events: Vec<Record>,
    /// Object keys seen: a second record for one object is a bug.
    seen: std::collections::HashSet<String>,
    /// Object keys recorded lost (and not completed since).
    lost_objects: std::collections::HashSet<String>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

impl Outcome {
    /// Reads a manifest folder (an absent one is empty); panics on a line that is not a JSON
    /// record.
    pub fn read(dir: &Path) -> Outcome {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let mut o = Outcome::default();
        for f in files {
            o.add(&fs::read_to_string(f).unwrap_or_default());
        }
        o
    }

    fn add(&mut self, text: &str) {
        let o = self;
        // A record being appended right now may be seen half-written: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in whole.lines() {
            let r: Record = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("manifest line {line:?} is not a record: {e}"));
            if let Some(object) = r.object.as_deref()
                && object.contains('-')
            {
                // Aggregate records name a session, and a session may have one per interval.
                // One object, one record; but a receiver stopped mid-object records it lost, and
                // the next run may complete it from the datagrams that follow: then it counts
                // as delivered.
                let completed_after_loss = r.status != Status::Lost
                    && o.lost_objects.remove(object)
                    && r.path.as_ref().is_some_and(|p| {
                        o.lost_named
                            .iter()
                            .position(|l| l == p)
                            .map(|i| o.lost_named.remove(i))
                            .is_some()
                    });
                assert!(
                    o.seen.insert(object.to_owned()) || completed_after_loss,
                    "two records for one object: {line}"
                );
                if r.status == Status::Lost {
                    o.lost_objects.insert(object.to_owned());
                }
            }
            match (r.status, r.path.clone()) {
                (Status::Delivered, Some(p)) => o.delivered.push(p),
                (Status::Superseded, Some(p)) => o.superseded.push(p),
                (Status::Repeat, Some(p)) => o.repeats.push(p),
                (Status::Lost, Some(p)) => o.lost_named.push(p),
                (Status::Lost, None) => o.lost_unnamed += r.objects,
                (s, _) if s.is_event() || s == Status::Removed => {
                    o.events.push(r);
                    continue;
                }
                _ => panic!("unexpected manifest record {line}"),
            }
            o.records.push(r);
        }
    }

    /// Outcomes recorded, unnamed objects counted one by one.
    pub fn total(&self) -> usize {
        self.delivered.len()
            + self.superseded.len()
            + self.repeats.len()
            + self.lost_named.len()
            + self.lost_unnamed as usize
    }
}
