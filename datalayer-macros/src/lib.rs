//! `embed_migrations!`, re-exported as `datalayer::embed_migrations!`: see its documentation
//! there. This crate has no dependencies: it reads the migration folders with `std::fs` and
//! writes the expansion as text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro::{Delimiter, Group, Literal, Spacing, Span, TokenStream, TokenTree};

/// Embeds migration folders (Diesel's layout) into a `datalayer::migrations::Migrator`.
///
/// ```text
/// datalayer::embed_migrations!("migrations")
/// datalayer::embed_migrations!("migrations", name = "billing")
/// datalayer::embed_migrations!(postgres = "migrations/postgres", sqlite = "migrations/sqlite")
/// ```
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(code) => code.parse().unwrap_or_else(|e| error(&format!("{e}"))),
        Err(message) => error(&message),
    }
}

fn error(message: &str) -> TokenStream {
    let mut literal = Literal::string(message);
    literal.set_span(Span::call_site());
    let args = TokenStream::from(TokenTree::Literal(literal));
    let mut out: TokenStream = "::core::compile_error!".parse().unwrap_or_default();
    out.extend([TokenTree::Group(Group::new(Delimiter::Parenthesis, args))]);
    out
}

/// What the call asked for.
#[derive(Default)]
struct Args {
    any: Option<String>,
    postgres: Option<String>,
    sqlite: Option<String>,
    name: Option<String>,
}

fn string_literal(literal: &Literal) -> Result<String, String> {
    let text = literal.to_string();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(inner.to_string()),
        _ => Err(format!(
            "embed_migrations!: expected a plain string literal (a folder relative to the \
             crate's Cargo.toml), found {text}"
        )),
    }
}

fn parse(input: TokenStream) -> Result<Args, String> {
    let mut args = Args::default();
    let mut tokens = input.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Literal(literal) if args.any.is_none() => {
                args.any = Some(string_literal(&literal)?);
            }
            TokenTree::Ident(key) => {
                match tokens.next() {
                    Some(TokenTree::Punct(p)) if p.as_char() == '=' => {}
                    _ => return Err(format!("embed_migrations!: expected `{key} = \"...\"`")),
                }
                let Some(TokenTree::Literal(value)) = tokens.next() else {
                    return Err(format!("embed_migrations!: `{key}` takes a string literal"));
                };
                let value = Some(string_literal(&value)?);
                match key.to_string().as_str() {
                    "postgres" => args.postgres = value,
                    "sqlite" => args.sqlite = value,
                    "name" => args.name = value,
                    other => {
                        return Err(format!(
                            "embed_migrations!: unknown key `{other}` (expected postgres, sqlite \
                             or name)"
                        ));
                    }
                }
            }
            other => return Err(format!("embed_migrations!: unexpected `{other}`")),
        }
        match tokens.next() {
            None => {}
            Some(TokenTree::Punct(p)) if p.as_char() == ',' && p.spacing() == Spacing::Alone => {}
            Some(other) => return Err(format!("embed_migrations!: expected `,`, found `{other}`")),
        }
    }
    if args.any.is_some() && (args.postgres.is_some() || args.sqlite.is_some()) {
        return Err(
            "embed_migrations!: give one folder for every backend, or `postgres = ` / \
                    `sqlite = ` folders, not both"
                .into(),
        );
    }
    if args.any.is_none() && args.postgres.is_none() && args.sqlite.is_none() {
        return Err(
            "embed_migrations!: name the migrations folder, e.g. embed_migrations!(\"migrations\")"
                .into(),
        );
    }
    Ok(args)
}

fn literal(text: &str) -> String {
    format!("{text:?}")
}

/// `Some(include_str!(path))` when the file exists, else `None`.
fn optional_include(path: &Path) -> String {
    if path.is_file() {
        format!("Some(include_str!({}))", literal(&path.to_string_lossy()))
    } else {
        "None".to_string()
    }
}

/// The files a migration folder may hold, as Diesel names them.
const FILES: [&str; 3] = ["up.sql", "down.sql", "metadata.toml"];

/// A migration folder holds `up.sql` and may hold `down.sql` and `metadata.toml`, in those
/// very names: `Up.sql` was skipped on Linux (and found on macOS's case-insensitive disks),
/// so the migration was silently never applied.
fn check_files(folder: &Path) -> Result<(), String> {
    let names: Vec<String> = std::fs::read_dir(folder)
        .map_err(|e| format!("embed_migrations!: {}: {e}", folder.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        if let Some(meant) = FILES
            .iter()
            .find(|file| file.eq_ignore_ascii_case(name) && *file != name)
        {
            return Err(format!(
                "embed_migrations!: {}: rename {name} to {meant} (Diesel and datalayer read \
                 migration files by their lower-case names)",
                folder.display()
            ));
        }
    }
    if !names.iter().any(|name| name == "up.sql") {
        return Err(format!(
            "embed_migrations!: {}: a migration folder holds up.sql (and optionally down.sql and \
             metadata.toml); this one has none",
            folder.display()
        ));
    }
    Ok(())
}

/// One `Embedded` set: every sub-folder (each must hold an `up.sql`), in name order.
fn embed_set(root: &Path, relative: &str, backend: &str, out: &mut String) -> Result<(), String> {
    let dir: PathBuf = root.join(relative);
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        format!(
            "embed_migrations!: cannot read the migrations folder {}: {e}",
            dir.display()
        )
    })?;
    let mut folders: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() && !name.starts_with('.') {
            check_files(&path)?;
            folders.push((name, path));
        }
    }
    folders.sort();
    let mut versions = std::collections::BTreeMap::new();
    let _ = write!(
        out,
        "::datalayer::migrations::__private::Embedded {{ backend: {backend}, origin: {}, \
         migrations: &[",
        literal(relative)
    );
    for (name, path) in &folders {
        let version = name.split('_').next().unwrap_or(name).replace('-', "");
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "embed_migrations!: {}: a migration folder is named <version>_<name>, with a \
                 version of digits and dashes (2026-11-26-000001_create_todos)",
                path.display()
            ));
        }
        if let Some(other) = versions.insert(version.clone(), name.clone()) {
            return Err(format!(
                "embed_migrations!: {name} and {other} in {} have the same version {version}",
                dir.display()
            ));
        }
        let up = path.join("up.sql");
        let down = optional_include(&path.join("down.sql"));
        let metadata = optional_include(&path.join("metadata.toml"));
        let _ = write!(
            out,
            "::datalayer::migrations::__private::EmbeddedMigration {{ name: {}, up: \
             include_str!({}), down: {down}, metadata: {metadata} }},",
            literal(name),
            literal(&up.to_string_lossy()),
        );
    }
    let fingerprint_path = dir.join("schema.fingerprint");
    let fingerprint = optional_include(&fingerprint_path);
    let _ = write!(
        out,
        "], fingerprint: {fingerprint}, fingerprint_path: {} }},",
        literal(&fingerprint_path.to_string_lossy())
    );
    Ok(())
}

fn expand(input: TokenStream) -> Result<String, String> {
    let args = parse(input)?;
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .map_err(|_| "embed_migrations!: CARGO_MANIFEST_DIR is not set (build with cargo)")?;
    let mut sets = String::new();
    if let Some(any) = &args.any {
        embed_set(&root, any, "None", &mut sets)?;
    }
    if let Some(postgres) = &args.postgres {
        let backend = "Some(::datalayer::config::Backend::Postgres)";
        embed_set(&root, postgres, backend, &mut sets)?;
    }
    if let Some(sqlite) = &args.sqlite {
        let backend = "Some(::datalayer::config::Backend::Sqlite)";
        embed_set(&root, sqlite, backend, &mut sets)?;
    }
    let name = match &args.name {
        Some(name) => literal(name),
        None => "env!(\"CARGO_PKG_NAME\")".to_string(),
    };
    Ok(format!(
        "::datalayer::migrations::Migrator::__embedded({name}, &[{sets}])"
    ))
}
