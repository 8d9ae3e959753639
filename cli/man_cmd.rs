//! The man pages, generated from the clap definitions (one page per command), so they
//! never drift from `--help`. A test regenerates them and compares with `man/`.

use std::path::Path;

use clap::CommandFactory;

use crate::args::Cli;
use crate::output::Failure;

/// Write ssq.1 and one page per subcommand (ssq-slave-set-master.1, ...) into `dir`.
///
/// # Errors
/// When a page cannot be written.
pub fn run(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    write_pages(&cmd, "ssq", dir)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<(), Failure> {
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .version(env!("CARGO_PKG_VERSION"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .date("")
        .render(&mut buf)?;
    std::fs::write(dir.join(format!("{name}.1")), buf)?;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
