//! Rebuilds the crate when a migration folder is added: `embed_migrations!` includes each
//! migration's files (so editing one rebuilds), but cannot watch the folders themselves.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
