//! `DATABASE_PASSWORD_FILE`: a password kept in a file, as container and Kubernetes secrets
//! are mounted, read when the settings load and again for each new connection.
//!
//! On Unix a file that other users may read earns a warning; Windows has no such mode bits
//! (its files are guarded by ACLs, which this check does not read), so there is no warning.

use std::io::Read;
use std::path::Path;

use secrecy::SecretString;

/// A password file is a few bytes; anything larger is not one.
const LIMIT: u64 = 4096;

/// The password in `path`: its content less one trailing newline. Errors never quote it.
pub(super) fn read(path: &Path) -> Result<SecretString, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file; give the file that holds the password".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > LIMIT {
        return Err(format!(
            "is larger than {LIMIT} bytes; it should hold only the password"
        ));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err("is empty; it should hold the password".into());
    }
    if text.contains('\0') {
        return Err(
            "holds a NUL byte, which no connection can send; it should hold only the password"
                .into(),
        );
    }
    Ok(SecretString::from(text))
}

/// A warning when users other than the owner may read the file (Unix mode bits).
#[cfg(unix)]
pub(super) fn exposed(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "DATABASE_PASSWORD_FILE {} can be read by other users (mode {mode:03o}); chmod 600 it",
            path.display()
        )
    })
}

/// No warning: Windows files carry ACLs, not the mode bits this check reads.
#[cfg(not(unix))]
pub(super) fn exposed(_path: &Path) -> Option<String> {
    None
}
