//! Splitting a migration outside a transaction into its statements.
//!
//! PostgreSQL runs a multi-statement query string as one implicit transaction, where
//! `CREATE INDEX CONCURRENTLY` and friends are refused; so a `run_in_transaction = false`
//! migration is sent one statement at a time, which also tells which of them ran when one
//! fails. The split knows PostgreSQL's lexical forms that may hold a `;`: quoted strings
//! (`'...'`, `E'...'`), quoted identifiers, dollar quotes (`$tag$...$tag$`) and comments
//! (`--`, nested `/* */`).

/// The statements of `sql`, trimmed, without empty ones (a trailing `;` or comment).
pub(crate) fn split(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i, bytes[i]),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' => i = skip_dollar_quoted(sql, i),
            b';' => {
                push(&mut statements, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(&mut statements, &sql[start..]);
    statements
}

fn push<'a>(statements: &mut Vec<&'a str>, text: &'a str) {
    let text = text.trim();
    if !only_comments(text) {
        statements.push(text);
    }
}

/// Whether `text` holds nothing but whitespace and comments.
fn only_comments(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if b.is_ascii_whitespace() => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            _ => return false,
        }
    }
    true
}

/// Past a `'...'` or `"..."` starting at `i` (a doubled quote stays inside; a backslash
/// escapes in `E'...'` strings, harmlessly skipped elsewhere too).
fn skip_quoted(bytes: &[u8], i: usize, quote: u8) -> usize {
    let escapes = quote == b'\'' && i > 0 && matches!(bytes[i - 1], b'E' | b'e');
    let mut j = i + 1;
    while j < bytes.len() {
        if escapes && bytes[j] == b'\\' {
            j += 2;
            continue;
        }
        if bytes[j] == quote {
            if bytes.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

fn skip_block_comment(bytes: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j + 1 < bytes.len() {
        match (bytes[j], bytes[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    bytes.len()
}

/// Past a `$tag$...$tag$` starting at `i`, or one byte on for a `$` that opens none (a
/// parameter such as `$1`).
fn skip_dollar_quoted(sql: &str, i: usize) -> usize {
    let rest = &sql[i + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let opens = rest.as_bytes().get(tag_len) == Some(&b'$')
        && !rest.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if !opens {
        return i + 1;
    }
    let delimiter = &sql[i..i + tag_len + 2];
    let body = i + delimiter.len();
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |n| body + n + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "-- build the index without blocking writers\n\
                   CREATE INDEX CONCURRENTLY a ON t (x);\n\
                   /* a ; in /* nested */ comment */ SELECT 'it''s; fine', \"odd;name\", E'\\'; x';\n\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
                   SELECT $1::int;\n-- trailing comment\n";
        assert_eq!(
            split(sql),
            [
                "-- build the index without blocking writers\nCREATE INDEX CONCURRENTLY a ON t (x)",
                "/* a ; in /* nested */ comment */ SELECT 'it''s; fine', \"odd;name\", E'\\'; x'",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT $1::int",
            ]
        );
        assert!(split("  ;\n-- nothing\n").is_empty());
    }
}
