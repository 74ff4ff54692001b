//! The historian feed's shell (`checkvalve-sim historian`): paces the records of
//! [`crate::historian::Points`] and writes them to a TCP or UDP input, or publishes them to an
//! MQTT broker (topic `PREFIX/TAG`, QoS 1).

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use tracing::info;

use crate::historian::Points;

/// Where the feed goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One record per line on one connection.
    Tcp(String),
    /// One record per datagram.
    Udp(String),
    /// One message per record, topic `prefix/TAG`.
    Mqtt {
        /// HOST:PORT.
        broker: String,
        /// Topic prefix.
        prefix: String,
    },
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            Ok(Target::Tcp(rest.to_owned()))
        } else if let Some(rest) = s.strip_prefix("udp://") {
            Ok(Target::Udp(rest.to_owned()))
        } else if let Some(rest) = s.strip_prefix("mqtt://") {
            let (broker, prefix) = rest.split_once('/').unwrap_or((rest, "historian"));
            Ok(Target::Mqtt {
                broker: broker.to_owned(),
                prefix: prefix.trim_end_matches('/').to_owned(),
            })
        } else {
            Err(format!(
                "{s:?}: expected tcp://HOST:PORT, udp://HOST:PORT or mqtt://HOST:PORT[/PREFIX]"
            ))
        }
    }
}

/// How much to send, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Records per second.
    pub rate: f64,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Sends `points` to `target` at `pace`; returns how many records went out.
pub fn run(mut points: Points, target: &Target, pace: Pace) -> Result<u64> {
    if pace.rate.is_nan() || pace.rate <= 0.0 {
        bail!("the rate must be positive");
    }
    let mut sink = Sink::open(target)?;
    info!(?target, rate = pace.rate, "historian feed");
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if pace.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let mut due = (elapsed.as_secs_f64() * pace.rate) as u64 + 1;
        if let Some(c) = pace.count {
            due = due.min(c);
        }
        while points.count() < due {
            let line = points.next(SystemTime::now());
            sink.send(&line)?;
        }
        sink.flush()?;
        if pace.count.is_some_and(|c| points.count() >= c) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sink.finish()?;
    Ok(points.count())
}

enum Sink {
    Tcp(std::io::BufWriter<TcpStream>),
    Udp(UdpSocket),
    Mqtt {
        client: rumqttc::Client,
        prefix: String,
        pump: std::thread::JoinHandle<()>,
    },
}

impl Sink {
    fn open(target: &Target) -> Result<Sink> {
        Ok(match target {
            Target::Tcp(to) => Sink::Tcp(std::io::BufWriter::new(
                TcpStream::connect(to).with_context(|| format!("cannot connect to {to}"))?,
            )),
            Target::Udp(to) => {
                let s = UdpSocket::bind(if to.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })?;
                s.connect(to)
                    .with_context(|| format!("cannot send to {to}"))?;
                Sink::Udp(s)
            }
            Target::Mqtt { broker, prefix } => {
                let (host, port) = broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| anyhow!("{broker:?}: expected HOST:PORT"))?;
                let mut opts = rumqttc::MqttOptions::new(
                    format!("checkvalve-historian-{}", std::process::id()),
                    host,
                    port,
                );
                opts.set_keep_alive(Duration::from_secs(30));
                let (client, mut connection) = rumqttc::Client::new(opts, 4096);
                let pump = std::thread::spawn(move || {
                    for event in connection.iter() {
                        if event.is_err() {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                });
                Sink::Mqtt {
                    client,
                    prefix: prefix.clone(),
                    pump,
                }
            }
        })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        match self {
            Sink::Tcp(w) => {
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
            Sink::Udp(s) => {
                // A full socket buffer drops a datagram, as for any UDP feed.
                let _ = s.send(line.as_bytes());
            }
            Sink::Mqtt { client, prefix, .. } => {
                let tag = Points::tag_of(line).unwrap_or("unknown");
                client.publish(
                    format!("{prefix}/{tag}"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    line.as_bytes().to_vec(),
                )?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Sink::Tcp(w) = self {
            w.flush()?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Tcp(mut w) => w.flush()?,
            Sink::Udp(_) => {}
            Sink::Mqtt { client, pump, .. } => {
                // Disconnecting after what was queued went out ends the pump's loop.
                client.disconnect()?;
                let _ = pump.join();
            }
        }
        Ok(())
    }
}
