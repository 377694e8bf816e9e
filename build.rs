//! Embeds each migration's `up.sql` a second time, for the ledger's checksums.
//!
//! `embed_migrations!` (diesel_migrations) keeps the SQL private, so the ledger could not hash
//! it. This writes `$OUT_DIR/migration_scripts.rs` with, per backend, every migration folder's
//! name and its `up.sql` (through `include_str!`, so an edit rebuilds the crate).
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut out = String::new();
    for backend in ["postgres", "sqlite"] {
        let dir = root.join(backend);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("up.sql").is_file())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let _ = writeln!(
            out,
            "pub(crate) const {}: &[(&str, &str)] = &[",
            backend.to_uppercase()
        );
        for name in names {
            let up = dir.join(&name).join("up.sql");
            let _ = writeln!(
                out,
                "    ({name:?}, include_str!({:?})),",
                up.display().to_string()
            );
        }
        let _ = writeln!(out, "];");
    }
    let target = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("migration_scripts.rs");
    std::fs::write(&target, out).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
}
