//! What the programs' command lines share: which flags were given on the command line (so that
//! flags beside `--config` override the file, the same way in every program), and the help text
//! on units.

use clap::parser::ValueSource;

/// How every program reads rates, sizes and durations (the end of its `--help`).
pub const UNITS: &str = "\
Units: RATE in bits per second, decimal (50k = 50,000; 800M; 1G = 10^9; max: no limit),
counting IP and UDP headers. SIZE in bytes, binary (64k = 64 KiB = 65,536; 96MiB; 1G = 2^30).
DURATION as 250ms, 10s, 5m, 2h or 30d (a bare number is seconds). PERCENT as 5% or 0.05.";

/// The text flag `id` was given with on the command line (values joined by commas, `true` for
/// a switch); `None` when it was not given there (a default does not count).
pub fn given(matches: &clap::ArgMatches, id: &str) -> Option<String> {
    if matches.value_source(id) != Some(ValueSource::CommandLine) {
        return None;
    }
    let raw = matches.try_get_raw(id).ok().flatten()?;
    Some(
        raw.map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_command_line_says_counts() {
        let cmd = clap::Command::new("t")
            .arg(clap::Arg::new("rate").long("rate").default_value("1G"))
            .arg(clap::Arg::new("bind").long("bind"))
            .arg(
                clap::Arg::new("check")
                    .long("check")
                    .action(clap::ArgAction::SetTrue),
            );
        let m = cmd
            .try_get_matches_from(["t", "--bind", "x:1", "--check"])
            .unwrap();
        assert_eq!(given(&m, "rate"), None);
        assert_eq!(given(&m, "bind").as_deref(), Some("x:1"));
        assert_eq!(given(&m, "check").as_deref(), Some("true"));
    }
}
