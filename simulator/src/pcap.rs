//! Writes forwarded datagrams to a pcap file (raw IP link type), as the receiver would capture them.

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use etherparse::PacketBuilder;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// A pcap capture of what the simulator forwarded.
pub struct Capture {
    writer: PcapWriter<BufWriter<File>>,
    from: SocketAddr,
    to: SocketAddr,
    frame: Vec<u8>,
}

fn pcap_err(e: pcap_file::PcapError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Capture {
    /// Creates `path`; packets go from `from` to `to` (the forwarding socket and the receiver).
    pub fn create(path: &Path, from: SocketAddr, to: SocketAddr) -> io::Result<Capture> {
        let header = PcapHeader {
            datalink: DataLink::RAW,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::new(File::create(path)?), header)
            .map_err(pcap_err)?;
        Ok(Capture {
            writer,
            from,
            to,
            frame: Vec::with_capacity(2048),
        })
    }

    /// Records one forwarded datagram.
    pub fn record(&mut self, payload: &[u8]) -> io::Result<()> {
        let builder = match (self.from, self.to) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => {
                PacketBuilder::ipv4(a.ip().octets(), b.ip().octets(), 64).udp(a.port(), b.port())
            }
            (a, b) => {
                let v6 = |s: SocketAddr| match s {
                    SocketAddr::V4(v) => v.ip().to_ipv6_mapped().octets(),
                    SocketAddr::V6(v) => v.ip().octets(),
                };
                PacketBuilder::ipv6(v6(a), v6(b), 64).udp(a.port(), b.port())
            }
        };
        self.frame.clear();
        builder
            .write(&mut self.frame, payload)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let packet = PcapPacket::new(ts, self.frame.len() as u32, &self.frame);
        self.writer.write_packet(&packet).map_err(pcap_err)?;
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(self) -> io::Result<()> {
        let mut inner = self.writer.into_writer();
        io::Write::flush(&mut inner)
    }
}
