//! Manual pages and shell completions generated from a program's own clap definition, so that
//! they never say other than `--help`: `packaging/build-debs` runs each program with
//! `CHECKVALVE_WRITE_MANUALS=DIR` and packages what it writes.

use std::io;
use std::path::Path;

/// The variable that asks a program to write its manuals into a folder and exit.
pub const VARIABLE: &str = "CHECKVALVE_WRITE_MANUALS";

/// If `CHECKVALVE_WRITE_MANUALS` names a folder, writes `command`'s manual pages (one per
/// command and visible subcommand, `man/NAME[-SUB].1`) and its bash, zsh and fish completions
/// (`completions/`) there, then exits the process (0, or 1 with the error on standard error).
pub fn write_if_asked(command: clap::Command) {
    let Some(dir) = std::env::var_os(VARIABLE) else {
        return;
    };
    match write(command, Path::new(&dir)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "cannot write the manuals into {}: {e}",
                Path::new(&dir).display()
            );
            std::process::exit(1);
        }
    }
}

/// Writes the manual pages and completions of `command` into `dir`.
pub fn write(mut command: clap::Command, dir: &Path) -> io::Result<()> {
    command.build();
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    pages(&command, command.get_name(), &man)?;
    let name = command.get_name().to_owned();
    for (shell, file) in [
        (clap_complete::Shell::Bash, name.clone()),
        (clap_complete::Shell::Zsh, format!("_{name}")),
        (clap_complete::Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = std::fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut command, &name, &mut out);
    }
    Ok(())
}

/// The page of `command` (named `name`, `checkvalve-send-status` for a subcommand), then its
/// visible subcommands' pages.
fn pages(command: &clap::Command, name: &str, dir: &Path) -> io::Result<()> {
    let page = command.clone().name(name.to_owned());
    let mut out = std::fs::File::create(dir.join(format!("{name}.1")))?;
    clap_mangen::Man::new(page).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_command_and_three_completions() {
        let cmd = clap::Command::new("tool")
            .about("a tool")
            .arg(clap::Arg::new("rate").long("rate").help("the rate"))
            .subcommand(clap::Command::new("status").about("shows it"))
            .subcommand(clap::Command::new("inner").hide(true));
        let dir = tempfile::tempdir().unwrap();
        write(cmd, dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man/tool.1")).unwrap();
        assert!(page.contains("rate"), "{page}");
        assert!(dir.path().join("man/tool-status.1").exists());
        assert!(!dir.path().join("man/tool-inner.1").exists());
        for f in ["tool", "_tool", "tool.fish"] {
            assert!(dir.path().join("completions").join(f).exists(), "{f}");
        }
    }
}
