//! The Debian packages, as an operator meets them: `packaging/build-debs` builds the three,
//! `dpkg -i` installs them on this machine, the units verify, each program's manual page shows
//! every option its `--help` shows, the completions and the documents the units point at are
//! installed, `--version` names the commit, nothing is enabled, a reinstall keeps an edited
//! configuration, and a purge leaves no program, unit or configuration behind.
//!
//! It installs into the machine itself, so it runs only as root with dpkg and cargo-deb (under
//! `CI` always: `.ci/run` installs cargo-deb), and it purges what it installed even when a check
//! fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGES: [&str; 3] = ["checkvalve-sender", "checkvalve-receiver", "checkvalve-sim"];
const PROGRAMS: [&str; 4] = [
    "checkvalve-send",
    "checkvalve-receive",
    "checkvalve-status",
    "checkvalve-sim",
];
const UNITS: [&str; 3] = [
    "checkvalve-send.service",
    "checkvalve-receive.service",
    "checkvalve-status.service",
];

/// Runs `program` with `args`, at most `secs` seconds (coreutils' timeout), C locale.
fn run(secs: u32, program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .env("MANWIDTH", "200")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether this machine can take the test; why not, if it cannot.
fn unable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["dpkg", "cargo-deb", "systemd-analyze", "man"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} not installed"));
        }
    }
    None
}

/// Purges the packages when dropped, so that a failed check leaves nothing installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

/// The long options a program's `--help` lists.
fn options(help: &str) -> Vec<String> {
    let mut out: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_lowercase())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_packages_install_with_manuals_units_and_completions_and_purge_clean() {
    if let Some(why) = unable() {
        checkvalve_tests::skip(&format!(
            "the package test needs root, dpkg and cargo-deb: {why}"
        ));
        return;
    }
    let root = root();
    let built = run(
        1200,
        "env",
        &["PROFILE=dev", "packaging/build-debs", "--fast"],
        &root,
    );
    assert!(built.status.success(), "build-debs: {}", text(&built));
    let debs: Vec<PathBuf> = PACKAGES
        .iter()
        .map(|p| {
            std::fs::read_dir(root.join("target/debian"))
                .expect("target/debian")
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_")) && n.ends_with(".deb"))
                })
                .max_by_key(|f| f.metadata().and_then(|m| m.modified()).ok())
                .unwrap_or_else(|| panic!("no {p} package in target/debian"))
        })
        .collect();
    for p in PACKAGES {
        let symbols = root
            .join("target/debian")
            .read_dir()
            .expect("target/debian")
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&format!("{p}-dbgsym_")) && n.ends_with(".ddeb"))
            });
        assert!(symbols, "no debug symbols package for {p}");
    }
    let folders_before: Vec<bool> = ["/srv/vendor-share", "/var/spool/checkvalve"]
        .iter()
        .map(|d| Path::new(d).exists())
        .collect();
    let _purge = Purge;
    let deb_args: Vec<&str> = debs.iter().map(|d| d.to_str().expect("utf-8")).collect();
    let installed = run(300, "dpkg", &[&["-i"][..], &deb_args].concat(), &root);
    assert!(installed.status.success(), "dpkg -i: {}", text(&installed));

    // The programs, with their commit.
    let commit = run(30, "git", &["rev-parse", "--short=12", "HEAD"], &root);
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    for p in PROGRAMS {
        let v = run(30, &format!("/usr/bin/{p}"), &["--version"], &root);
        let said = text(&v);
        assert!(
            v.status.success() && said.contains("(commit "),
            "{p}: {said}"
        );
        if !commit.is_empty() {
            assert!(said.contains(&commit), "{p} does not name {commit}: {said}");
        }
        // Every option of --help is in the manual page.
        let help = text(&run(30, &format!("/usr/bin/{p}"), &["--help"], &root));
        let page = run(60, "man", &["-P", "cat", p], &root);
        let page_text = String::from_utf8_lossy(&page.stdout).to_string();
        assert!(page.status.success(), "man {p}: {}", text(&page));
        let missing: Vec<String> = options(&help)
            .into_iter()
            .filter(|o| !page_text.contains(o.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "man {p} lacks {missing:?}:\n{page_text}"
        );
        for completion in [
            format!("/usr/share/bash-completion/completions/{p}"),
            format!("/usr/share/zsh/vendor-completions/_{p}"),
            format!("/usr/share/fish/vendor_completions.d/{p}.fish"),
        ] {
            assert!(Path::new(&completion).is_file(), "no {completion}");
        }
        let sourced = run(
            30,
            "bash",
            &[
                "-c",
                &format!(". /usr/share/bash-completion/completions/{p} && complete -p {p}"),
            ],
            &root,
        );
        assert!(
            sourced.status.success(),
            "{p}'s bash completion: {}",
            text(&sourced)
        );
    }
    assert!(Path::new("/usr/share/man/man1/checkvalve-send-status.1.gz").is_file());

    // The units verify, point at documents that are there, and none is enabled.
    for unit in UNITS {
        let path = format!("/usr/lib/systemd/system/{unit}");
        let unit_text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let verified = run(60, "systemd-analyze", &["verify", &path], &root);
        let complaints: Vec<String> = text(&verified)
            .lines()
            .filter(|l| l.contains(unit))
            .map(str::to_owned)
            .collect();
        assert!(
            verified.status.success() && complaints.is_empty(),
            "{unit}: {}",
            text(&verified)
        );
        for doc in unit_text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
            .flat_map(str::split_whitespace)
            .filter_map(|d| d.strip_prefix("file:"))
        {
            assert!(
                Path::new(doc).is_file(),
                "{unit} points at {doc}, not installed"
            );
        }
        let wanted = format!("/etc/systemd/system/multi-user.target.wants/{unit}");
        assert!(!Path::new(&wanted).exists(), "{unit} enabled on install");
    }

    // The account, folders and the configuration the service reads as its group.
    assert!(
        run(30, "getent", &["passwd", "checkvalve"], &root)
            .status
            .success()
    );
    for conf in ["/etc/checkvalve/send.toml", "/etc/checkvalve/receive.toml"] {
        let owner = run(30, "stat", &["-c", "%G %a", conf], &root);
        assert_eq!(
            String::from_utf8_lossy(&owner.stdout).trim(),
            "checkvalve 640",
            "{conf}"
        );
    }
    assert!(Path::new("/srv/vendor-share").is_dir() && Path::new("/var/spool/checkvalve").is_dir());
    let conffiles = run(
        30,
        "dpkg-query",
        &["-W", "-f=${Conffiles}", "checkvalve-sender"],
        &root,
    );
    assert!(
        text(&conffiles).contains("/etc/checkvalve/send.toml"),
        "{}",
        text(&conffiles)
    );

    // An operator's edit survives a reinstall of the package.
    let edited = "\n# edited by the operator\n";
    let mut conf = std::fs::read_to_string("/etc/checkvalve/send.toml").expect("conf");
    conf.push_str(edited);
    std::fs::write("/etc/checkvalve/send.toml", &conf).expect("edit");
    let again = run(300, "dpkg", &["-i", deb_args[0]], &root);
    assert!(again.status.success(), "reinstall: {}", text(&again));
    assert!(
        std::fs::read_to_string("/etc/checkvalve/send.toml")
            .expect("conf")
            .contains(edited),
        "the reinstall replaced the edited configuration"
    );

    // A purge leaves none of it.
    let purged = run(300, "dpkg", &[&["--purge"][..], &PACKAGES].concat(), &root);
    assert!(purged.status.success(), "purge: {}", text(&purged));
    let mut left: Vec<String> = PROGRAMS
        .iter()
        .map(|p| format!("/usr/bin/{p}"))
        .chain(UNITS.iter().map(|u| format!("/usr/lib/systemd/system/{u}")))
        .chain(
            [
                "/etc/checkvalve/send.toml",
                "/etc/checkvalve/receive.toml",
                "/usr/share/man/man1/checkvalve-send.1.gz",
                "/usr/share/bash-completion/completions/checkvalve-send",
                "/usr/share/doc/checkvalve-sender/operator.md",
            ]
            .map(str::to_owned),
        )
        .filter(|f| Path::new(f).exists())
        .collect();
    for p in PACKAGES {
        let status = run(30, "dpkg-query", &["-W", "-f=${Status}", p], &root);
        // Purged: unknown to dpkg, or at most "not-installed" (never "config-files").
        let said = String::from_utf8_lossy(&status.stdout);
        if !said.trim().is_empty() && !said.contains("not-installed") {
            left.push(format!("package {p}"));
        }
    }
    assert!(left.is_empty(), "left after the purge: {left:?}");
    // The data folders stay with a purge (the plant's and the vendors' data); the test made
    // them, so it removes them.
    for (dir, existed) in ["/srv/vendor-share", "/var/spool/checkvalve"]
        .iter()
        .zip(folders_before)
    {
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
