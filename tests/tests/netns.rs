//! Across a real Ethernet-sized link, as a diode install is: two network namespaces joined by a
//! veth pair (the test makes them and removes them), the sender in one, the receiver in the
//! other. On loopback (MTU 65,536) every datagram fits; here a datagram longer than the link's
//! MTU is refused by the sender's kernel, so the shard length must follow from `--mtu`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use checkvalve_tests::{Proc, bin, bound_addr, digest_tree, keygen_at, make_tree, serial};

/// Two namespaces and the veth pair between them, removed on drop.
struct Link {
    sender_ns: String,
    receiver_ns: String,
    receiver_ip: String,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// Namespaces `cv<pid>s` and `cv<pid>r` joined by a veth pair of `mtu` bytes; `None` (the test
    /// is skipped, and says so) where namespaces cannot be made (not root).
    fn new(mtu: u32) -> Option<Link> {
        let id = std::process::id();
        let (s, r) = (format!("cv{id}s"), format!("cv{id}r"));
        let probe = ip(&["netns", "add", &s]);
        if !probe.status.success() {
            checkvalve_tests::skip(&format!(
                "cannot make a network namespace here: {}",
                String::from_utf8_lossy(&probe.stderr)
            ));
            return None;
        }
        let link = Link {
            sender_ns: s.clone(),
            receiver_ns: r.clone(),
            receiver_ip: format!("10.{}.{}.2", 100 + (id >> 16) % 100, (id >> 8) % 250),
        };
        must(&["netns", "add", &r]);
        let net = link
            .receiver_ip
            .rsplit_once('.')
            .map(|(n, _)| n.to_string());
        let net = net.expect("dotted");
        must(&[
            "link", "add", "cvs0", "netns", &s, "type", "veth", "peer", "name", "cvr0", "netns", &r,
        ]);
        let mtu = mtu.to_string();
        for (ns, dev, addr) in [
            (&s, "cvs0", format!("{net}.1/24")),
            (&r, "cvr0", format!("{net}.2/24")),
        ] {
            must(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            must(&["-n", ns, "link", "set", dev, "mtu", &mtu, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.sender_ns, &self.receiver_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Sends a tree from the sender's namespace to a receiver in the other, with `extra` sender
/// flags, and checks it arrived byte-identical.
fn crosses(link: &Link, dir: &Path, tag: &str, extra: &[&str]) {
    let key = keygen_at(&dir.join(format!("key-{tag}")), 1);
    let out = dir.join(format!("out-{tag}"));
    let ns_exec = |ns: &str, program: &str, args: Vec<String>| -> Vec<String> {
        let mut all = vec![
            "netns".into(),
            "exec".into(),
            ns.to_string(),
            bin(program).display().to_string(),
        ];
        all.extend(args);
        all
    };
    let mut receiver = Proc::start(
        dir,
        &format!("receiver-{tag}"),
        Path::new("ip"),
        &ns_exec(
            &link.receiver_ns,
            "checkvalve-receive",
            vec![
                "--bind".into(),
                format!("{}:0", link.receiver_ip),
                "--out".into(),
                out.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ],
        ),
    );
    let to = bound_addr(&receiver, " receiving", Duration::from_secs(20));
    let src = make_tree(dir, &format!("tree-{tag}"), 20, 3 << 20, 7);
    let mut args = vec![
        "--to".to_string(),
        to,
        "--rate".into(),
        "100M".into(),
        "--key".into(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(src.display().to_string());
    let mut sender = Proc::start(
        dir,
        &format!("sender-{tag}"),
        Path::new("ip"),
        &ns_exec(&link.sender_ns, "checkvalve-send", args),
    );
    let status = sender.wait(Duration::from_secs(120));
    let log = sender.log_text();
    assert!(status.success(), "{tag}: the sender failed:\n{log}");
    assert!(
        !log.contains("Message too long"),
        "{tag}: datagrams longer than the link:\n{log}"
    );
    let expected = digest_tree(&src);
    let name = format!("tree-{tag}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = digest_tree(&out.join(&name));
        if got.len() >= expected.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        got.len(),
        expected.len(),
        "{tag}: files delivered across the veth link:\n{}",
        checkvalve_tests::tail(&receiver.log)
    );
    assert!(got == expected, "{tag}: not byte-identical");
    assert!(receiver.stop().success());
}

#[test]
fn keyed_and_encrypted_transfers_cross_a_1500_byte_veth_link_at_the_default_settings() {
    let _serial = serial();
    let Some(link) = Link::new(1500) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    crosses(&link, dir.path(), "keyed", &[]);
    crosses(&link, dir.path(), "encrypted", &["--encrypt"]);
}

#[test]
fn a_9000_byte_veth_link_carries_jumbo_datagrams_with_mtu_9000() {
    let _serial = serial();
    let Some(link) = Link::new(9000) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    crosses(&link, dir.path(), "jumbo", &["--mtu", "9000"]);
}
