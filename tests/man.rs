//! The man pages in man/ are what `ssq generate-man` makes from the clap definitions.

mod util;

use std::collections::BTreeMap;
use std::path::Path;

use util::*;

const STALE: &str = "man pages are stale: run `cargo run --bin ssq -- generate-man man`";

fn pages(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{STALE}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn man_pages_are_up_to_date() {
    let env = Env::new();
    let fresh = env.path().join("man");
    let out = env.ssq(&["generate-man", fresh.to_str().unwrap()]);
    assert_ok(&out, "ssq generate-man");
    let want = pages(&fresh);
    assert!(want.contains_key("ssq.1"), "generate-man wrote no ssq.1");
    assert!(
        want.contains_key("ssq-slave-set-master.1"),
        "generate-man wrote no page per subcommand: {:?}",
        want.keys()
    );
    let have = pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("man"));
    let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
    let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    let changed: Vec<_> = want
        .iter()
        .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "{STALE}\nmissing from man/: {missing:?}\nnot generated any more: {extra:?}\ndiffering: {changed:?}"
    );
}
