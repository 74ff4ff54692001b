//! The stream inputs' process (`checkvalve-send inputs`): takes records from the plant (UDP, TCP,
//! an MQTT broker, a followed file, standard input) and hands them to the sender through the stream spool,
//! durably, with their sequence numbers. The sender starts it before confining itself; it never
//! sees the link socket, and the sender never receives.
//!
//! ```text
//! [udp NAME] [tcp NAME ─► conn…] [mqtt NAME] [file NAME] [stdin NAME]
//!      └──────────── Taken (bounded: QUEUED) ─────────────► [spool writer, main thread]
//!                                                   STATE/streams/NAME/FIRSTSEQ.seg (appended)
//! ```
//!
//! A full queue holds up the TCP, file and stdin readers (their producers wait, nothing is
//! lost); a UDP input cannot hold its senders up, so the kernel's buffer absorbs what it can and
//! the rest is dropped and counted there (as by any syslog server). A record is handed over once
//! its frame is written: a restart of either process repeats or loses nothing written. A
//! followed file's position is in every frame it produced, so it resumes exactly after the last
//! line spooled.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use checkvalve_common::stream::batch::{MAX_RECORD_LEN, Record, check_channel};
use checkvalve_common::stream::spool::{Frame, Spooled, segment_name, segment_seq};
use tracing::{error, info, warn};

/// Records taken and not yet spooled, at most.
const QUEUED: usize = 8192;
/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// TCP connections served at once per input; more are closed at once (and logged).
const MAX_CONNECTIONS: usize = 64;
/// How often a followed file is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);
/// The folder of the stream spool in the state folder.
pub const SPOOL_DIR: &str = "streams";

/// Where a stream's records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One record per datagram; a multicast address joins its group (on the interface of
    /// `iface`, an IPv4 address, or the one the kernel picks).
    Udp(SocketAddr, Option<std::net::Ipv4Addr>),
    /// Newline-delimited or octet-counted (RFC 6587) records, per connection.
    Tcp(SocketAddr),
    /// A growing file, followed across rotation and truncation.
    File(PathBuf),
    /// Messages of an MQTT broker's topics matching `filter` (QoS 1, a persistent session).
    Mqtt {
        /// The broker, HOST:PORT as given (resolved at each connection).
        broker: String,
        /// The topic filter (`+` and `#` wildcards).
        filter: String,
    },
    /// Standard input, one record per line.
    Stdin,
}

/// A named stream input: `NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The channel.
    pub name: String,
    /// Its input.
    pub input: Input,
}

impl FromStr for StreamSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=URL"))?;
        Ok(StreamSpec {
            name: name.to_owned(),
            input: parse_input(name, url)?,
        })
    }
}

/// Parses a stream input's URL for channel `name`.
pub fn parse_input(name: &str, url: &str) -> Result<Input, String> {
    check_channel(name).map_err(|e| e.to_string())?;
    let addr = |rest: &str| {
        use std::net::ToSocketAddrs;
        rest.to_socket_addrs()
            .map_err(|e| format!("{url:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: no address"))
    };
    if url == "-" {
        Ok(Input::Stdin)
    } else if let Some(rest) = url.strip_prefix("udp://") {
        let (rest, iface) = match rest.split_once("?iface=") {
            Some((a, i)) => (
                a,
                Some(
                    i.parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("{url:?}: iface= takes an IPv4 address"))?,
                ),
            ),
            None => (rest, None),
        };
        let a = addr(rest)?;
        if iface.is_some() && !a.ip().is_multicast() {
            return Err(format!("{url:?}: iface= is for a multicast group"));
        }
        Ok(Input::Udp(a, iface))
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        Ok(Input::Tcp(addr(rest)?))
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        let (broker, filter) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url:?}: expected mqtt://HOST:PORT/TOPIC-FILTER"))?;
        addr(broker)?;
        if filter.is_empty() {
            return Err(format!("{url:?}: no topic filter"));
        }
        Ok(Input::Mqtt {
            broker: broker.to_owned(),
            filter: filter.to_owned(),
        })
    } else if let Some(rest) = url.strip_prefix("file://") {
        let path = PathBuf::from(rest);
        if !path.is_absolute() {
            return Err(format!("{url:?}: file://PATH needs an absolute path"));
        }
        Ok(Input::File(path))
    } else {
        Err(format!(
            "{url:?}: expected udp://HOST:PORT, tcp://HOST:PORT, mqtt://HOST:PORT/TOPIC-FILTER, file:///PATH or -"
        ))
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Udp(a, None) => write!(f, "udp://{a}"),
            Input::Udp(a, Some(i)) => write!(f, "udp://{a}?iface={i}"),
            Input::Tcp(a) => write!(f, "tcp://{a}"),
            Input::File(p) => write!(f, "file://{}", p.display()),
            Input::Mqtt { broker, filter } => write!(f, "mqtt://{broker}/{filter}"),
            Input::Stdin => write!(f, "-"),
        }
    }
}

/// A record taken from an input, not yet numbered.
struct Taken {
    channel: usize,
    time_us: i64,
    topic: Vec<u8>,
    payload: Vec<u8>,
    source: (u64, u64),
    /// Called once the record is written to the spool (MQTT's acknowledgement: the broker keeps
    /// a message until then, so a stop in between repeats it instead of losing it).
    on_written: Option<Box<dyn FnOnce() + Send>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One channel's spool: its folder, the segment being appended to, and the next number.
struct ChannelSpool {
    name: String,
    dir: PathBuf,
    file: Option<File>,
    len: u64,
    next: u64,
    buf: Vec<u8>,
    /// What to call once `buf` is written.
    written: Vec<Box<dyn FnOnce() + Send>>,
}

impl ChannelSpool {
    /// Opens the channel's spool, cutting a frame its writer left half-written, and says where
    /// it stands: its next sequence number and the last frame's source position.
    fn open(state: &Path, name: &str) -> Result<(Self, (u64, u64))> {
        let dir = state.join(SPOOL_DIR).join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the stream spool {}", dir.display()))?;
        let mut segments: Vec<u64> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| segment_seq(e.file_name().to_str()?))
            .collect();
        segments.sort_unstable();
        let mut spool = ChannelSpool {
            name: name.to_owned(),
            dir,
            file: None,
            len: 0,
            next: 0,
            buf: Vec::new(),
            written: Vec::new(),
        };
        let mut source = (0, 0);
        if let Some(&last) = segments.last() {
            let path = spool.dir.join(segment_name(last));
            let bytes = std::fs::read(&path)?;
            let mut at = 0;
            spool.next = last;
            while let Frame::Whole(s, len) = Spooled::decode(&bytes[at..]) {
                spool.next = s.record.seq + 1;
                source = s.source;
                at += len;
            }
            if at < bytes.len() {
                warn!(channel = name, segment = %path.display(), bytes = bytes.len() - at, "stream spool: a frame cut short by a stop was removed");
            }
            let f = OpenOptions::new().append(true).open(&path)?;
            f.set_len(at as u64)?;
            spool.len = at as u64;
            spool.file = Some(f);
        }
        Ok((spool, source))
    }

    fn push(&mut self, t: Taken) {
        let s = Spooled {
            record: Record {
                seq: self.next,
                time_us: t.time_us,
                topic: t.topic,
                payload: t.payload,
            },
            source: t.source,
        };
        self.next += 1;
        s.encode(&mut self.buf);
        self.written.extend(t.on_written);
    }

    /// Writes what was numbered since the last flush: handed over once this returns.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() || self.len >= SEGMENT_BYTES {
            // The first frame in the buffer is the new segment's first record.
            let first = match Spooled::decode(&self.buf) {
                Frame::Whole(s, _) => s.record.seq,
                _ => self.next,
            };
            let path = self.dir.join(segment_name(first));
            self.file = Some(OpenOptions::new().create(true).append(true).open(&path)?);
            self.len = 0;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
        }
        self.buf.clear();
        for done in self.written.drain(..) {
            done();
        }
        Ok(())
    }
}

/// Runs the inputs of `streams` into the spool under `state` until SIGTERM, SIGINT, or the
/// sender that started it stops.
pub fn run(state: &Path, streams: Vec<StreamSpec>) -> Result<ExitCode> {
    let parent = nix::unistd::getppid();
    let stop = checkvalve_host::signals::stop_flag().context("cannot install signal handler")?;
    let _lock = lock_spool(state)?;
    let mut spools = Vec::new();
    let mut sources = Vec::new();
    for s in &streams {
        let (spool, source) = ChannelSpool::open(state, &s.name)?;
        info!(channel = %s.name, input = %s.input, next_seq = spool.next, "stream input");
        spools.push(spool);
        sources.push(source);
    }
    // Bound before confinement, so that a port in use is an error at start.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Taken>(QUEUED);
    // Set once the spool holds everything taken, so that MQTT inputs send their last
    // acknowledgements before they disconnect (a stop then repeats nothing).
    let spooled = Arc::new(AtomicBool::new(false));
    let mut starts: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let tx = tx.clone();
        let stop = Arc::clone(&stop);
        match &s.input {
            Input::Udp(addr, iface) => {
                let socket = udp_socket(*addr, *iface)?;
                info!(channel = %s.name, bind = %socket.local_addr()?, "stream input listening (udp)");
                starts.push(Box::new(move || udp(i, socket, tx, &stop)));
            }
            Input::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on tcp://{addr}"))?;
                info!(channel = %s.name, bind = %listener.local_addr()?, "stream input listening (tcp)");
                let name = s.name.clone();
                starts.push(Box::new(move || tcp(i, &name, listener, tx, &stop)));
            }
            Input::File(path) => {
                let (path, from) = (path.clone(), sources[i]);
                starts.push(Box::new(move || follow(i, &path, from, tx, &stop)));
            }
            Input::Mqtt { broker, filter } => {
                // Resolved now: once confined, this process reads none of the resolver's files.
                use std::net::ToSocketAddrs;
                let resolved = broker
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve the MQTT broker {broker}"))?
                    .next()
                    .ok_or_else(|| anyhow!("no address for the MQTT broker {broker}"))?;
                let (broker, filter, name) = (resolved.to_string(), filter.clone(), s.name.clone());
                let spooled = Arc::clone(&spooled);
                starts.push(Box::new(move || {
                    mqtt(i, &name, &broker, &filter, tx, &stop, &spooled)
                }));
            }
            Input::Stdin => starts.push(Box::new(move || stdin(i, tx, &stop))),
        }
    }
    drop(tx);
    let writable = vec![state.join(SPOOL_DIR)];
    let readable: Vec<PathBuf> = streams
        .iter()
        .filter_map(|s| match &s.input {
            Input::File(p) => p.parent().map(Path::to_path_buf),
            _ => None,
        })
        .collect();
    crate::confine_files(&writable, &readable);
    match checkvalve_confine::one_direction(checkvalve_confine::Role::Inputs) {
        Ok(()) => info!(
            "seccomp: the inputs' process may use internet sockets and its files only: no program started, no raw or Unix socket"
        ),
        Err(e) => warn!("cannot install the inputs' seccomp filter: {e}"),
    }
    let mut threads = Vec::new();
    for (i, start) in starts.into_iter().enumerate() {
        let t = std::thread::Builder::new()
            .name(format!("input-{}", streams[i].name))
            .spawn(start)
            .context("cannot start an input thread")?;
        // Standard input may end; any other input ending is a failure of this process.
        if streams[i].input != Input::Stdin {
            threads.push((streams[i].name.clone(), t));
        }
    }
    let ended = || {
        threads
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(n, _)| n.clone())
    };
    let failed = write_spool(&rx, &mut spools, &stop, parent, &ended);
    // The inputs stop too, however the writer's loop ended (a signal, the sender gone, an input).
    stop.store(true, Ordering::Relaxed);
    for s in &mut spools {
        if let Err(e) = s.flush() {
            error!(channel = %s.name, "stream spool not written: {e}");
        }
    }
    spooled.store(true, Ordering::Relaxed);
    for (name, t) in threads {
        let mqtt = streams
            .iter()
            .any(|s| s.name == name && matches!(s.input, Input::Mqtt { .. }));
        // Each bounds its own goodbye; the other inputs are left to the process's exit.
        if mqtt && t.join().is_err() {
            error!(channel = %name, "mqtt input failed while stopping");
        }
    }
    if let Some(name) = failed {
        error!(channel = %name, "stream input ended: the inputs' process stops (the sender with it, and a restart starts both)");
        return Ok(ExitCode::from(1));
    }
    info!("stream inputs stopped");
    Ok(ExitCode::SUCCESS)
}

/// Takes the stream spool's lock: one writer only, even while the inputs' process of a sender
/// killed a moment ago is still finishing (it stops within a fraction of a second).
fn lock_spool(state: &Path) -> Result<File> {
    let dir = state.join(SPOOL_DIR);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the stream spool {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    for _ in 0..100 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(50)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    Err(anyhow!(
        "another inputs' process holds the stream spool {} (is another sender running on this state folder?)",
        dir.display()
    ))
}

/// The spool writer: numbers each record and appends it, flushing whenever the queue is empty;
/// until a stop, or an input ended (`ended` names it, and so does the return value).
fn write_spool(
    rx: &Receiver<Taken>,
    spools: &mut [ChannelSpool],
    stop: &AtomicBool,
    parent: nix::unistd::Pid,
    ended: &dyn Fn() -> Option<String>,
) -> Option<String> {
    let mut failing: HashMap<usize, bool> = HashMap::new();
    loop {
        if stop.load(Ordering::Relaxed) || nix::unistd::getppid() != parent {
            // What the inputs took is spooled (the caller flushes): a stop loses none of it.
            while let Ok(t) = rx.try_recv() {
                let c = t.channel;
                spools[c].push(t);
            }
            return None;
        }
        if let Some(name) = ended() {
            return Some(name);
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(t) => {
                let c = t.channel;
                spools[c].push(t);
                while let Ok(t) = rx.try_recv() {
                    let c = t.channel;
                    spools[c].push(t);
                    if spools[c].buf.len() > 1 << 20 {
                        break;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(name) = ended() {
                    return Some(name);
                }
                // Only standard input, and it ended: nothing more will come, but the sender
                // keeps running (and sending what was spooled) until it is stopped.
                while !stop.load(Ordering::Relaxed) && nix::unistd::getppid() == parent {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return None;
            }
        }
        for (i, s) in spools.iter_mut().enumerate() {
            match s.flush() {
                Ok(()) => {
                    if failing.remove(&i).is_some() {
                        info!(channel = %s.name, "stream spool written again");
                    }
                }
                Err(e) => {
                    if failing.insert(i, true).is_none() {
                        error!(channel = %s.name, "stream spool not written (records are held and retried): {e}");
                    }
                }
            }
        }
    }
}

/// The receive buffer a UDP input asks for: some 10,000 syslog datagrams.
const UDP_INPUT_BUFFER: usize = 8 << 20;

fn udp_socket(addr: SocketAddr, iface: Option<std::net::Ipv4Addr>) -> Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    let bind: SocketAddr = match addr.ip() {
        // A group's datagrams are addressed to the group: bind its port on every address.
        std::net::IpAddr::V4(g) if g.is_multicast() => {
            socket.set_reuse_address(true)?;
            (std::net::Ipv4Addr::UNSPECIFIED, addr.port()).into()
        }
        std::net::IpAddr::V6(g) if g.is_multicast() => {
            socket.set_reuse_address(true)?;
            (std::net::Ipv6Addr::UNSPECIFIED, addr.port()).into()
        }
        _ => addr,
    };
    socket
        .bind(&bind.into())
        .with_context(|| format!("cannot bind udp://{addr}"))?;
    match addr.ip() {
        std::net::IpAddr::V4(g) if g.is_multicast() => socket
            .join_multicast_v4(&g, &iface.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))
            .with_context(|| format!("cannot join the multicast group {g}"))?,
        std::net::IpAddr::V6(g) if g.is_multicast() => socket
            .join_multicast_v6(&g, 0)
            .with_context(|| format!("cannot join the multicast group {g}"))?,
        _ => {}
    }
    let socket: UdpSocket = socket.into();
    // Records arrive in bursts (a syslog client sends as fast as it reads) and the spool's writer
    // may pause on the disk: what the buffer cannot hold is lost before the sender.
    let granted = checkvalve_host::udp::buffers::grow_receive_buffer(&socket, UDP_INPUT_BUFFER);
    if granted < UDP_INPUT_BUFFER {
        warn!(
            input = %addr,
            granted,
            wanted = UDP_INPUT_BUFFER,
            "udp input: receive buffer smaller than asked: bursts may overflow it; run `sysctl -w net.core.rmem_max={UDP_INPUT_BUFFER}` (and persist it in /etc/sysctl.d)"
        );
    }
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

fn trim_line(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | b'\0'] = b {
        b = rest;
    }
    b
}

fn take(channel: usize, payload: &[u8], source: (u64, u64)) -> Taken {
    Taken {
        channel,
        time_us: now_us(),
        topic: Vec::new(),
        payload: payload[..payload.len().min(MAX_RECORD_LEN)].to_vec(),
        source,
        on_written: None,
    }
}

fn udp(channel: usize, socket: UdpSocket, tx: SyncSender<Taken>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let line = trim_line(&buf[..n]);
                if !line.is_empty() && tx.send(take(channel, line, (0, 0))).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                warn!("udp input: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn tcp(
    channel: usize,
    name: &str,
    listener: TcpListener,
    tx: SyncSender<Taken>,
    stop: &Arc<AtomicBool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!(channel = name, "tcp input: {e}");
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            warn!(
                channel = name,
                "tcp input: {MAX_CONNECTIONS} connections already: one refused"
            );
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (tx, active, owned) = (tx.clone(), Arc::clone(&active), name.to_owned());
        let spawned = std::thread::Builder::new()
            .name("input-conn".into())
            .spawn(move || {
                if let Err(e) = connection(channel, conn, &tx) {
                    warn!(channel = %owned, "tcp input: connection ended: {e}");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            warn!(channel = name, "tcp input: no thread for a connection: {e}");
        }
    }
}

/// Reads one TCP connection: octet-counted frames (RFC 6587) if it starts with `LEN SP`, else
/// one record per line, as rsyslog tells them apart.
fn connection(channel: usize, conn: TcpStream, tx: &SyncSender<Taken>) -> Result<()> {
    let mut r = BufReader::with_capacity(256 << 10, conn);
    let counted = {
        let head = r.fill_buf()?;
        let digits = head.iter().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && digits < 10 && head.get(digits) == Some(&b' ') && head[0] != b'0'
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        if counted {
            let mut len = Vec::new();
            if r.read_until(b' ', &mut len)? == 0 {
                return Ok(());
            }
            let n: usize = std::str::from_utf8(trim_line(&len[..len.len() - 1]))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .filter(|&n| n <= MAX_RECORD_LEN)
                .ok_or_else(|| anyhow!("bad octet count {:?}", String::from_utf8_lossy(&len)))?;
            line.resize(n, 0);
            r.read_exact(&mut line)?;
        } else if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let rec = trim_line(&line);
        if !rec.is_empty() && tx.send(take(channel, rec, (0, 0))).is_err() {
            return Ok(());
        }
    }
}

/// Subscribes to `filter` on `broker` with QoS 1 in a persistent session (client id
/// `checkvalve-NAME`, clean session off), so that what the broker kept while this input was away
/// arrives after a restart. A message is acknowledged once written to the spool; at a stop,
/// what arrives after the stop is left unacknowledged for the broker to send again, and the
/// acknowledgements of what was spooled go out (once `spooled` is set) before the goodbye.
fn mqtt(
    channel: usize,
    name: &str,
    broker: &str,
    filter: &str,
    tx: SyncSender<Taken>,
    stop: &AtomicBool,
    spooled: &AtomicBool,
) {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let Some((host, port)) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
    else {
        error!(channel = name, broker, "mqtt input: not HOST:PORT");
        return;
    };
    let mut opts = MqttOptions::new(format!("checkvalve-{name}"), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_RECORD_LEN + 4096, 64 << 10);
    let (client, mut connection) = Client::new(opts, 1024);
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                info!(
                    channel = name,
                    broker,
                    filter,
                    session_present = ack.session_present,
                    "mqtt input: connected"
                );
                connected = true;
                // The broker keeps a persistent session's subscription; asking again is harmless.
                if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce) {
                    warn!(channel = name, "mqtt input: cannot subscribe: {e}");
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let taken = Taken {
                    channel,
                    time_us: now_us(),
                    topic: p.topic.as_bytes().to_vec(),
                    payload: p.payload[..p.payload.len().min(MAX_RECORD_LEN)].to_vec(),
                    source: (0, 0),
                    // Acknowledged once spooled, by the spool's writer.
                    on_written: Some({
                        let client = client.clone();
                        let owned = name.to_owned();
                        Box::new(move || {
                            if let Err(e) = client.ack(&p) {
                                warn!(channel = owned, "mqtt input: cannot acknowledge: {e}");
                            }
                        })
                    }),
                };
                if tx.send(taken).is_err() {
                    return;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if connected {
                    warn!(
                        channel = name,
                        broker, "mqtt input: connection lost: {e} (retrying)"
                    );
                    connected = false;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => return,
        }
    }
    drop(tx);
    if connected {
        mqtt_goodbye(name, &client, &mut connection, spooled);
    }
}

/// Keeps the connection turning until the spool is written (so that the acknowledgements its
/// writer queues go out), then disconnects; bounded, since a broker may stop answering.
fn mqtt_goodbye(
    name: &str,
    client: &rumqttc::Client,
    connection: &mut rumqttc::Connection,
    spooled: &AtomicBool,
) {
    use rumqttc::{Event, Outgoing};
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut asked = false;
    while Instant::now() < deadline {
        if !asked && spooled.load(Ordering::Relaxed) {
            // Queued behind the acknowledgements, which therefore leave first.
            if client.disconnect().is_err() {
                return;
            }
            asked = true;
        }
        match connection.recv_timeout(Duration::from_millis(50)) {
            // Messages still arriving are not acknowledged: the broker sends them again.
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                info!(channel = name, "mqtt input: disconnected");
                return;
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(_)) | Err(rumqttc::RecvTimeoutError::Disconnected) => return,
        }
    }
    warn!(
        channel = name,
        "mqtt input: the broker did not take the goodbye in time (what it sends again is repeated)"
    );
}

fn stdin(channel: usize, tx: SyncSender<Taken>, stop: &AtomicBool) {
    let mut r = std::io::stdin().lock();
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => {
                info!("standard input ended");
                return;
            }
            Ok(_) => {
                let rec = trim_line(&line);
                if !rec.is_empty() && tx.send(take(channel, rec, (0, 0))).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!("standard input: {e}");
                return;
            }
        }
    }
}

/// A file's identity: device and inode folded into one number.
fn identity(m: &std::fs::Metadata) -> u64 {
    m.ino() ^ m.dev().rotate_left(32)
}

/// Follows `path` like `tail -F`, from `from` (identity, offset) when that is still the file:
/// a rename rotation is read to its end before the new file is taken from its start; a file
/// truncated in place (copytruncate) is read again from its start.
fn follow(channel: usize, path: &Path, from: (u64, u64), tx: SyncSender<Taken>, stop: &AtomicBool) {
    let mut current: Option<(File, u64, u64)> = None;
    let mut partial = Vec::new();
    let mut warned = false;
    let mut buf = vec![0u8; 256 << 10];
    while !stop.load(Ordering::Relaxed) {
        if current.is_none() {
            match File::open(path).and_then(|f| Ok((f.metadata()?, f))) {
                Ok((m, mut f)) => {
                    let id = identity(&m);
                    let offset = if id == from.0 && from.1 <= m.len() {
                        from.1
                    } else {
                        0
                    };
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        info!(file = %path.display(), offset, "following");
                        current = Some((f, id, offset));
                        partial.clear();
                        warned = false;
                    }
                }
                Err(e) => {
                    if !warned {
                        warn!(file = %path.display(), "cannot follow (yet): {e}");
                        warned = true;
                    }
                }
            }
        }
        let Some((f, id, offset)) = current.as_mut() else {
            std::thread::sleep(FOLLOW_EVERY);
            continue;
        };
        // Everything there is, line by line.
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // `offset` is where `partial` (the line not yet ended) starts in the file.
                    let mut start = 0;
                    for (i, &b) in buf[..n].iter().enumerate() {
                        if b != b'\n' {
                            continue;
                        }
                        partial.extend_from_slice(&buf[start..i]);
                        *offset += partial.len() as u64 + 1;
                        start = i + 1;
                        let rec = trim_line(&partial);
                        if !rec.is_empty() && tx.send(take(channel, rec, (*id, *offset))).is_err() {
                            return;
                        }
                        partial.clear();
                    }
                    partial.extend_from_slice(&buf[start..n]);
                    if partial.len() > MAX_RECORD_LEN {
                        // A line longer than a record can be goes out cut, as a record.
                        *offset += partial.len() as u64;
                        if tx.send(take(channel, &partial, (*id, *offset))).is_err() {
                            return;
                        }
                        partial.clear();
                    }
                }
                Err(e) => {
                    warn!(file = %path.display(), "read failed: {e}");
                    break;
                }
            }
        }
        let (id, offset) = (*id, *offset);
        match std::fs::metadata(path) {
            Ok(m) if identity(&m) != id => {
                // Renamed away: its end was just read; the new file from its start.
                info!(file = %path.display(), "rotated: following the new file");
                current = None;
                continue;
            }
            Ok(m) if m.len() < offset + partial.len() as u64 => {
                info!(file = %path.display(), "truncated: reading again from its start");
                if let Some((f, _, o)) = current.as_mut()
                    && f.seek(SeekFrom::Start(0)).is_ok()
                {
                    *o = 0;
                    partial.clear();
                }
            }
            _ => {}
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl StreamSpec {
        fn to_string_input(&self) -> String {
            self.input.to_string()
        }
    }

    #[test]
    fn stream_urls_parse_and_bad_ones_say_why() {
        let s: StreamSpec = "syslog=tcp://127.0.0.1:6514".parse().unwrap();
        assert_eq!(s.input, Input::Tcp("127.0.0.1:6514".parse().unwrap()));
        assert_eq!(
            "app=file:///var/log/app.log"
                .parse::<StreamSpec>()
                .unwrap()
                .input,
            Input::File("/var/log/app.log".into())
        );
        assert_eq!("p=-".parse::<StreamSpec>().unwrap().input, Input::Stdin);
        assert_eq!(
            "m=udp://239.255.7.7:5514?iface=127.0.0.1"
                .parse::<StreamSpec>()
                .unwrap()
                .to_string_input(),
            "udp://239.255.7.7:5514?iface=127.0.0.1"
        );
        for bad in [
            "x=udp://127.0.0.1:5514?iface=127.0.0.1",
            "x=udp://239.255.7.7:5514?iface=eth0",
            "nourl",
            "a/b=-",
            "x=http://h:1",
            "x=file://rel",
            "x=udp://nohost",
        ] {
            assert!(bad.parse::<StreamSpec>().is_err(), "{bad}");
        }
    }
}
