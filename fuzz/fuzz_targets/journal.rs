//! The journal as reset and a rerun of join read it, from arbitrary bytes on disk: loading
//! never panics, and every record it accepts names only clean absolute paths (which resolve
//! under the root) and numbered backups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_attach::effects::fs::Root;
use node_attach::apply::journal::{Change, Journal, JOURNAL_FILE};
use std::path::{Component, Path};
use std::sync::OnceLock;

fn root() -> &'static tempfile::TempDir {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        // A write and a read per input: on tmpfs where there is one.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("tmp");
        std::fs::create_dir_all(dir.path().join("var/lib/node-attach")).expect("state dir");
        dir
    })
}

fn clean(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let dir = root();
    let file = dir.path().join(JOURNAL_FILE.trim_start_matches('/'));
    std::fs::write(&file, data).expect("write the journal");
    let Ok(Some(records)) = Journal::load(&Root::new(dir.path())) else {
        return;
    };
    for r in records {
        match r.change {
            Some(Change::Dir { path } | Change::Symlink { path, .. } | Change::Removed { path }) => {
                assert!(clean(&path), "{}", path.display())
            }
            Some(Change::File { path, prior }) => {
                assert!(clean(&path), "{}", path.display());
                if let Some(p) = prior {
                    assert!(!p.backup.is_empty() && p.backup.bytes().all(|b| b.is_ascii_digit()));
                }
            }
            _ => {}
        }
    }
});
