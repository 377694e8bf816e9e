//! Embedded migrations on real databases: up, down, up again; downs undo ups exactly; a failing
//! migration is named and leaves the database at the last good version; both backends produce
//! the same tables and columns.

use datalayer::migrations::MigrationError;
use datalayer::migrations::{Revert, Status};
use datalayer::{Conn, Engine, Error};

use crate::common::{fresh_engines, fresh_postgres, migrated_engines, query_lines};

const ALL: [&str; 2] = [
    "2026-11-25-000001_create_users",
    "2026-11-25-000002_create_posts",
];

/// Everything the migrations can create, one line per object, excluding Diesel's own table.
fn snapshot(engine: &Engine) -> Vec<String> {
    let mut conn = engine.get().expect("checkout");
    let sql = match engine.backend() {
        datalayer::config::Backend::Postgres => {
            "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' \
                    || is_nullable || ' ' || coalesce(column_default, '') AS line
               FROM information_schema.columns
              WHERE table_schema = 'public'
                AND table_name NOT IN ('__diesel_schema_migrations', 'datalayer_migrations')
             UNION ALL
             SELECT 'index ' || indexdef FROM pg_indexes
              WHERE schemaname = 'public'
                AND tablename NOT IN ('__diesel_schema_migrations', 'datalayer_migrations')
             UNION ALL
             SELECT 'trigger ' || trigger_name || ' ' || event_manipulation || ' ' || action_statement
               FROM information_schema.triggers WHERE trigger_schema = 'public'
             UNION ALL
             SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                AND conrelid::regclass::text
                    NOT IN ('__diesel_schema_migrations', 'datalayer_migrations')
             UNION ALL
             SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
             ORDER BY 1"
        }
        datalayer::config::Backend::Sqlite => {
            "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS line FROM sqlite_master
              WHERE tbl_name NOT IN ('__diesel_schema_migrations', 'datalayer_migrations')
              ORDER BY 1"
        }
    };
    query_lines(&mut conn, sql)
}

#[test]
fn up_down_up_on_both_backends() {
    for (engine, _place) in fresh_engines("dl_migrate", &[]) {
        let empty = snapshot(&engine);
        assert_eq!(
            blog::models::migrator()
                .run_pending(&engine)
                .expect("migrate"),
            ALL
        );
        assert_eq!(
            blog::models::migrator()
                .run_pending(&engine)
                .expect("again"),
            Vec::<String>::new()
        );
        let migrated = snapshot(&engine);
        assert!(migrated.len() >= 5, "{migrated:#?}");
        assert_status(
            &blog::models::migrator().status(&engine).expect("status"),
            &ALL,
            &[],
        );

        // The last down undoes the last up exactly: re-applying it gives the same schema.
        assert_eq!(
            blog::models::migrator()
                .revert(&engine, Revert::Steps(1))
                .expect("revert"),
            [ALL[1]]
        );
        let first_only = snapshot(&engine);
        assert!(
            first_only.iter().all(|line| !line.contains("posts")),
            "{first_only:#?}"
        );
        assert_eq!(
            blog::models::migrator().run_pending(&engine).expect("redo"),
            [ALL[1]]
        );
        assert_eq!(snapshot(&engine), migrated);

        // Reverting everything leaves nothing behind.
        assert_eq!(
            blog::models::migrator()
                .revert(&engine, Revert::All)
                .expect("revert all"),
            [ALL[1], ALL[0]]
        );
        assert_eq!(snapshot(&engine), empty);
        assert_status(
            &blog::models::migrator().status(&engine).expect("status"),
            &[],
            &ALL,
        );
        assert_eq!(
            blog::models::migrator()
                .run_pending(&engine)
                .expect("up again"),
            ALL
        );
        assert_eq!(snapshot(&engine), migrated);
    }
}

#[test]
fn a_failing_migration_is_named_and_the_database_stays_at_the_last_good_one() {
    for (engine, _place) in fresh_engines("dl_migfail", &[]) {
        {
            let mut conn = engine.get().expect("checkout");
            use diesel::connection::SimpleConnection;
            conn.batch_execute("CREATE TABLE posts (x INTEGER)")
                .expect("squat on posts");
        }
        let error = blog::models::migrator()
            .run_pending(&engine)
            .expect_err("posts already exists");
        let Error::Migration(MigrationError::Apply {
            migration,
            file,
            source,
            ..
        }) = &error
        else {
            panic!("expected a migration error, got {error}");
        };
        assert_eq!(migration, ALL[1]);
        let backend = engine.backend();
        assert_eq!(file, &format!("migrations/{backend}/{}/up.sql", ALL[1]));
        assert!(source.to_string().contains("already exists"), "{source}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("migration {} ({file}) failed: ", ALL[1]))
        );
        let status = blog::models::migrator().status(&engine).expect("status");
        assert_eq!(status.applied, [ALL[0]]);
        assert_eq!(status.pending, [ALL[1]]);
    }
}

#[test]
fn migrations_ignore_the_applications_statement_timeout() {
    let (engine, _db) = fresh_postgres("dl_migtimeout", &[("DATABASE_STATEMENT_TIMEOUT", "1ms")]);
    // With a 1 ms statement timeout on every pooled connection, DDL that takes longer would
    // fail if migrations ran on one of them.
    assert_eq!(
        blog::models::migrator()
            .run_pending(&engine)
            .expect("migrate"),
        ALL
    );
}

/// (table, column, type, nullable), normalised across backends.
fn columns(engine: &Engine) -> Vec<String> {
    let mut conn = engine.get().expect("checkout");
    let raw = match engine.backend() {
        datalayer::config::Backend::Postgres => query_lines(
            &mut conn,
            "SELECT table_name || '|' || column_name || '|' || data_type || '|' || is_nullable
                 || '|0' AS line
               FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name IN ('users', 'posts')",
        ),
        datalayer::config::Backend::Sqlite => query_lines(
            &mut conn,
            "SELECT m.name || '|' || c.name || '|' || c.type || '|' \
                 || CASE c.\"notnull\" WHEN 1 THEN 'NO' ELSE 'YES' END || '|' || c.pk AS line
               FROM sqlite_master m, pragma_table_info(m.name) c
              WHERE m.name IN ('users', 'posts')",
        ),
    };
    let mut normalised: Vec<String> = raw
        .iter()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let ty = match (f[2].to_ascii_lowercase().as_str(), f[4]) {
                // SQLite's INTEGER PRIMARY KEY is its 64-bit rowid.
                ("integer", "1") | ("bigint", _) => "bigint".to_string(),
                ("timestamp without time zone", _) | ("timestamp", _) => "timestamp".to_string(),
                (other, _) => other.to_string(),
            };
            format!("{}.{} {} nullable={}", f[0], f[1], ty, f[3])
        })
        .collect();
    normalised.sort();
    normalised
}

#[test]
fn both_backends_have_the_same_tables_and_columns() {
    let engines = migrated_engines();
    let postgres = columns(&engines[0]);
    let sqlite = columns(&engines[1]);
    assert_eq!(
        (engines[0].backend(), engines[1].backend()),
        (
            datalayer::config::Backend::Postgres,
            datalayer::config::Backend::Sqlite
        )
    );
    assert_eq!(postgres.len(), 12, "{postgres:#?}");
    assert!(postgres.contains(&"posts.published_at timestamp nullable=YES".to_string()));
    assert!(postgres.contains(&"users.id bigint nullable=NO".to_string()));
    assert_eq!(postgres, sqlite);
}

/// `status` lists exactly `applied` and `pending`, nothing unknown or edited, and no lock.
fn assert_status(status: &Status, applied: &[&str], pending: &[&str]) {
    assert_eq!(status.applied, applied, "{status:?}");
    assert_eq!(status.pending, pending, "{status:?}");
    assert!(
        status.unknown.is_empty() && status.edited.is_empty() && status.lock.is_none(),
        "{status:?}"
    );
}

/// A `Migrator` is a diesel `MigrationSource` for each backend: plain Diesel code applies it
/// with diesel_migrations' harness, ledger rows included, and the migrator then finds every
/// migration applied under its set with its checksum, nothing pending or edited; reverting
/// through Diesel removes the ledger row with the migration.
#[test]
fn plain_diesel_runs_a_migrator_and_the_migrator_agrees() {
    use diesel_migrations::MigrationHarness;
    let migrator = blog::models::migrator();
    for (engine, _place) in fresh_engines("dl_source", &[]) {
        let mut conn = engine.get().expect("checkout");
        let names = |versions: Vec<diesel::migration::MigrationVersion>| {
            versions.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let applied = match &mut *conn {
            Conn::Postgres(pg) => pg.run_pending_migrations(migrator.clone()).map(names),
            Conn::Sqlite(lite) => lite.run_pending_migrations(migrator.clone()).map(names),
        }
        .expect("diesel applies the set");
        assert_eq!(applied, ["20261125000001", "20261125000002"]);

        assert_status(&migrator.status(&engine).expect("status"), &ALL, &[]);
        let expected: Vec<String> = migrator
            .set(engine.backend())
            .expect("a set")
            .scripts()
            .iter()
            .map(|s| format!("{} {} {}", s.version, s.checksum, migrator.name()))
            .collect();
        let ledger = "SELECT version || ' ' || checksum || ' ' || migration_set AS line \
                      FROM datalayer_migrations ORDER BY version";
        assert_eq!(query_lines(&mut conn, ledger), expected);

        match &mut *conn {
            Conn::Postgres(pg) => pg.revert_last_migration(migrator.clone()).map(drop),
            Conn::Sqlite(lite) => lite.revert_last_migration(migrator.clone()).map(drop),
        }
        .expect("diesel reverts the last one");
        assert_eq!(query_lines(&mut conn, ledger), expected[..1]);
        assert_status(
            &migrator.status(&engine).expect("status"),
            &ALL[..1],
            &ALL[1..],
        );
    }
}

/// `Migrator::run_pending_on` runs the whole sequence on a connection of the caller's own: the
/// migrations with their ledger rows (the engine's `status` then agrees), nothing left to do on
/// a second call; settings of the other backend are refused, naming the variable.
#[test]
fn run_pending_on_applies_on_a_connection_of_ones_own() {
    use diesel::Connection;
    let migrator = blog::models::migrator();
    for (engine, place) in fresh_engines("dl_on_conn", &[]) {
        let mut conn = match (&place, &engine.settings().target) {
            (crate::common::Place::Postgres(db), _) => Conn::Postgres(
                diesel::PgConnection::establish(&crate::common::database_url(&db.name))
                    .expect("connect"),
            ),
            (_, datalayer::config::Target::Sqlite(sqlite)) => Conn::Sqlite(
                diesel::SqliteConnection::establish(&sqlite.path.to_string_lossy()).expect("open"),
            ),
            _ => unreachable!("a PostgreSQL place has PostgreSQL settings"),
        };
        let settings = engine.settings();
        assert_eq!(
            migrator
                .run_pending_on(&mut conn, settings)
                .expect("applies"),
            ALL
        );
        assert!(
            migrator
                .run_pending_on(&mut conn, settings)
                .expect("nothing to do")
                .is_empty()
        );
        assert_status(&migrator.status(&engine).expect("status"), &ALL, &[]);
        let checksums = query_lines(
            &mut conn,
            "SELECT checksum AS line FROM datalayer_migrations ORDER BY version",
        );
        assert_eq!(checksums.len(), 2);

        let (other, _other_place) = match &conn {
            Conn::Postgres(_) => crate::common::fresh_sqlite(&[]),
            Conn::Sqlite(_) => fresh_postgres("dl_on_conn_other", &[]),
        };
        let error = migrator
            .run_pending_on(&mut conn, other.settings())
            .expect_err("settings of the other backend");
        let message = error.to_string();
        assert!(
            matches!(&error, Error::Config(_))
                && (message.contains(
                    "DATABASE_PATH: describes a sqlite database but the connection is to postgres"
                ) || message.contains(
                    "DATABASE_URL: describes a postgres database but the connection is to sqlite"
                )),
            "{message}"
        );
    }
}
