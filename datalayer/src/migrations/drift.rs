//! The schema fingerprint and the boot-time drift check.
//!
//! A fingerprint is one line per fact about datalayer's tables, sorted:
//! `<table> <object> <attribute>: <value>`, where the object is a column name, `-` for the
//! table itself, or `index:<name>`, `constraint:<name>`, `trigger:<name>`. Columns have a
//! `type`, `nullable` and `default`; the others a `definition`. The test command migrates a
//! fresh database per backend and checks the committed `migrations/<backend>/schema.fingerprint`;
//! at boot the live schema is compared with it.

use std::collections::{BTreeMap, BTreeSet};

use diesel::RunQueryDsl;
use diesel::sql_types::Text;

use crate::config::Backend;
use crate::engine::Conn;
use crate::error::Error;

/// Tables that are not the application's: Diesel's and datalayer's own bookkeeping.
const BOOKKEEPING: &str = "('__diesel_schema_migrations', 'datalayer_migrations')";

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// `tables`: only these (looked up by name: on a fresh backend, a third faster than scanning
/// `pg_class` for the schema's tables), or every table of the current schema.
fn postgres_sql(tables: Option<&[&str]>) -> String {
    let tables = match tables {
        Some(names) => {
            let regclasses: Vec<String> = names
                .iter()
                .map(|name| {
                    let ident = format!("\"{}\"", name.replace('"', "\"\""));
                    format!(
                        "to_regclass(quote_ident(current_schema()) || '.' || '{}')",
                        ident.replace('\'', "''")
                    )
                })
                .collect();
            format!("c.oid IN ({})", regclasses.join(", "))
        }
        None => format!(
            "c.relnamespace = current_schema()::text::regnamespace AND c.relkind = 'r' \
             AND c.relname NOT IN {BOOKKEEPING}"
        ),
    };
    format!(
        "WITH t AS (
            SELECT c.oid, c.relname FROM pg_class c WHERE {tables}
         ), col AS (
            SELECT t.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                   a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid) AS def
              FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         )
         SELECT relname || ' - table: present' AS line FROM t
         UNION ALL SELECT relname || ' ' || attname || ' type: ' || type FROM col
         UNION ALL SELECT relname || ' ' || attname || ' nullable: '
                          || CASE WHEN attnotnull THEN 'no' ELSE 'yes' END FROM col
         UNION ALL SELECT relname || ' ' || attname || ' default: '
                          || CASE WHEN attidentity <> '' THEN 'identity' ELSE coalesce(def, 'none') END
                     FROM col
         UNION ALL SELECT t.relname || ' index:' || i.relname || ' definition: '
                          || replace(pg_get_indexdef(x.indexrelid), current_schema() || '.', '')
                     FROM t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid
         UNION ALL SELECT t.relname || ' constraint:' || con.conname || ' definition: '
                          || pg_get_constraintdef(con.oid)
                     FROM t JOIN pg_constraint con ON con.conrelid = t.oid
         UNION ALL SELECT t.relname || ' trigger:' || tg.tgname || ' definition: '
                          || replace(pg_get_triggerdef(tg.oid), current_schema() || '.', '')
                     FROM t JOIN pg_trigger tg ON tg.tgrelid = t.oid AND NOT tg.tgisinternal
         ORDER BY 1"
    )
}

fn sqlite_sql() -> String {
    // Statements keep their original text in sqlite_master: flatten it to one line.
    let flat = |column: &str| {
        format!(
            "trim(replace(replace(replace({column}, char(13), ' '), char(10), ' '), char(9), ' '))"
        )
    };
    format!(
        "WITH t AS (
            SELECT name FROM sqlite_master
             WHERE type = 'table' AND name NOT IN {BOOKKEEPING} AND name NOT LIKE 'sqlite_%'
         )
         SELECT t.name || ' - table: present' AS line FROM t
         UNION ALL SELECT t.name || ' ' || c.name || ' type: ' || lower(c.type)
                     FROM t, pragma_table_info(t.name) c
         UNION ALL SELECT t.name || ' ' || c.name || ' nullable: '
                          || CASE WHEN c.\"notnull\" = 1 THEN 'no' ELSE 'yes' END
                     FROM t, pragma_table_info(t.name) c
         UNION ALL SELECT t.name || ' ' || c.name || ' default: ' || coalesce(c.dflt_value, 'none')
                     FROM t, pragma_table_info(t.name) c
         UNION ALL SELECT t.name || ' constraint:primary_key definition: PRIMARY KEY ('
                          || (SELECT group_concat(name, ', ') FROM
                                (SELECT name FROM pragma_table_info(t.name) WHERE pk > 0 ORDER BY pk))
                          || ')'
                     FROM t WHERE EXISTS (SELECT 1 FROM pragma_table_info(t.name) WHERE pk > 0)
         UNION ALL SELECT t.name || ' index:' || il.name || ' definition: '
                          || CASE WHEN m.sql IS NOT NULL THEN {sql}
                             ELSE upper(CASE il.origin WHEN 'pk' THEN 'primary key' ELSE 'unique' END) || ' ('
                                  || (SELECT group_concat(name, ', ') FROM
                                        (SELECT name FROM pragma_index_info(il.name) ORDER BY seqno))
                                  || ')' END
                     FROM t, pragma_index_list(t.name) il
                     LEFT JOIN sqlite_master m ON m.type = 'index' AND m.name = il.name
         UNION ALL SELECT t.name || ' constraint:fk_' || fk.\"from\" || ' definition: FOREIGN KEY ('
                          || fk.\"from\" || ') REFERENCES ' || fk.\"table\" || '(' || fk.\"to\"
                          || ') ON DELETE ' || fk.on_delete
                     FROM t, pragma_foreign_key_list(t.name) fk
         UNION ALL SELECT m.tbl_name || ' trigger:' || m.name || ' definition: ' || {trigger}
                     FROM sqlite_master m JOIN t ON t.name = m.tbl_name WHERE m.type = 'trigger'
         ORDER BY 1",
        sql = flat("m.sql"),
        trigger = flat("m.sql"),
    )
}

/// The fingerprint of the live schema: every application table in the current schema (or
/// SQLite file), one fact per line, sorted, ending with a newline.
pub fn fingerprint(conn: &mut Conn, backend: Backend) -> Result<String, Error> {
    fingerprint_of(conn, backend, None)
}

/// The tables a fingerprint describes.
pub(crate) fn tables(fingerprint: &str) -> Vec<&str> {
    fingerprint
        .lines()
        .filter_map(|line| line.strip_suffix(" - table: present"))
        .collect()
}

/// [`fingerprint`] of only `tables` (or every table) on PostgreSQL; SQLite reads every table
/// (cheap there).
pub(crate) fn fingerprint_of(
    conn: &mut Conn,
    backend: Backend,
    tables: Option<&[&str]>,
) -> Result<String, Error> {
    let sql = match backend {
        Backend::Postgres => postgres_sql(tables),
        Backend::Sqlite => sqlite_sql(),
    };
    let lines: Vec<Line> = diesel::sql_query(sql).load(conn)?;
    let mut lines: Vec<String> = lines.into_iter().map(|l| l.line).collect();
    lines.sort();
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

/// `(table, object, attribute) -> value` for one fingerprint.
fn facts(fingerprint: &str) -> BTreeMap<(String, String, String), String> {
    fingerprint
        .lines()
        .filter_map(|line| {
            let (head, value) = line.split_once(": ")?;
            let mut words = head.splitn(3, ' ');
            let table = words.next()?.to_string();
            let object = words.next()?.to_string();
            let attribute = words.next()?.to_string();
            Some(((table, object, attribute), value.to_string()))
        })
        .collect()
}

/// How a difference names its object: `users.display_name`, `users`, or the index's name.
fn display_name(table: &str, object: &str) -> String {
    match object.split_once(':') {
        Some((_, name)) => name.to_string(),
        None if object == "-" => table.to_string(),
        None => format!("{table}.{object}"),
    }
}

/// Every difference between the expected and the live fingerprint, on the expected tables:
/// `users.display_name: type text, expected character varying(80)`,
/// `posts_author_id_created_at_idx: missing`, `users.nickname: unexpected column`.
/// With `allow_additions`, objects the expected fingerprint lacks are not differences (a newer
/// release may have added them).
pub fn differences(expected: &str, live: &str, allow_additions: bool) -> Vec<String> {
    let expected = facts(expected);
    let live = facts(live);
    let tables: BTreeSet<&String> = expected.keys().map(|(table, _, _)| table).collect();
    let mut missing_objects = BTreeSet::new();
    let mut out = Vec::new();
    for ((table, object, attribute), value) in &expected {
        let name = display_name(table, object);
        let object_present = live.keys().any(|(t, o, _)| t == table && o == object);
        if !object_present {
            if missing_objects.insert(name.clone()) {
                out.push(format!("{name}: missing"));
            }
            continue;
        }
        match live.get(&(table.clone(), object.clone(), attribute.clone())) {
            Some(actual) if actual == value => {}
            Some(actual) => out.push(format!("{name}: {attribute} {actual}, expected {value}")),
            None => out.push(format!("{name}: no {attribute}, expected {value}")),
        }
    }
    if !allow_additions {
        let mut unexpected = BTreeSet::new();
        for (table, object, _) in live.keys() {
            let known = expected.keys().any(|(t, o, _)| t == table && o == object);
            if tables.contains(table) && !known && unexpected.insert((table, object)) {
                let kind = object.split_once(':').map_or("column", |(kind, _)| kind);
                out.push(format!(
                    "{}: unexpected {kind}",
                    display_name(table, object)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED: &str = "posts - table: present
posts index:posts_author_id_created_at_idx definition: CREATE INDEX x ON posts (author_id)
users - table: present
users display_name nullable: no
users display_name type: character varying(80)
users email type: text
";

    #[test]
    fn reports_changed_missing_and_unexpected_objects() {
        let live = "posts - table: present
users - table: present
users display_name nullable: no
users display_name type: text
users nickname type: text
other - table: present
";
        assert_eq!(
            differences(EXPECTED, live, false),
            [
                "posts_author_id_created_at_idx: missing",
                "users.display_name: type text, expected character varying(80)",
                "users.email: missing",
                "users.nickname: unexpected column",
            ]
        );
        assert_eq!(
            differences(EXPECTED, live, true).len(),
            3,
            "additions allowed"
        );
        assert!(differences(EXPECTED, EXPECTED, false).is_empty());
    }
}
