//! `ssq master forget`: remove a decommissioned slave from the master's list (and its
//! node-key pin, so a reinstalled slave may join again under the same name).

use ssq::syncapi::Forgotten;

use crate::args::MasterOpt;
use crate::output::{emit, Failure};
use crate::target::Ctx;

/// Run `ssq master forget SLAVE`.
///
/// # Errors
/// As the call. An unknown slave is not an error.
pub async fn forget(ctx: &Ctx, slave: &str, m: &MasterOpt) -> Result<(), Failure> {
    let mut t = if ctx.g.local {
        ctx.target(None).await?
    } else {
        let master = ctx.master_ref(m.master.as_deref())?;
        ctx.target(Some(&master)).await?
    };
    let f: Forgotten = t.forget_slave(slave).await?;
    emit(ctx.g.output, &f, || render(&f, slave))
}

/// The human answer.
pub fn render(f: &Forgotten, asked: &str) -> String {
    let name = if f.name.is_empty() { asked } else { &f.name };
    if f.existed {
        format!("forgot {name}")
    } else {
        format!("{name} was not known")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_outcomes() {
        let f = Forgotten {
            name: "slave-1".into(),
            existed: true,
        };
        assert_eq!(render(&f, "x"), "forgot slave-1");
        let f = Forgotten {
            name: String::new(),
            existed: false,
        };
        assert_eq!(render(&f, "slave-9"), "slave-9 was not known");
    }

    #[test]
    fn forget_parses() {
        use crate::args::{Cli, Cmd, MasterSub};
        use clap::Parser;
        let cli =
            Cli::try_parse_from(["ssq", "master", "forget", "slave-1", "--master", "m"]).unwrap();
        let Cmd::Master(MasterSub::Forget { slave, master }) = cli.command else {
            panic!("not master forget")
        };
        assert_eq!(slave, "slave-1");
        assert_eq!(master.master.as_deref(), Some("m"));
        // The allow-list commands still parse as before.
        let cli = Cli::try_parse_from(["ssq", "master", "allow", "list"]).unwrap();
        assert!(matches!(cli.command, Cmd::Master(MasterSub::Access(_))));
    }
}
