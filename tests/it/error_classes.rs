//! Every kind of error a checkout or a query gives, produced on a real database, falls into
//! the class that says what to do about it (`datalayer::error::ErrorClass`).

use datalayer::error::{ErrorClass, Rejection, classify};
use datalayer::{Conn, Engine, Settings};
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::result::Error as DieselError;

use crate::common::{
    admin, closed_port, fresh_postgres, fresh_sqlite, postgres_settings, query_text,
};

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    id: i32,
}

fn failing(conn: &mut Conn, sql: &str) -> DieselError {
    match conn.batch_execute(sql) {
        Err(e) => e,
        Ok(()) => panic!("{sql}: succeeded"),
    }
}

const SCHEMA: &str = "CREATE TABLE parents (id INTEGER PRIMARY KEY, email VARCHAR(20) UNIQUE);
     CREATE TABLE children (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parents (id),
                            age INTEGER CHECK (age >= 0));
     INSERT INTO parents VALUES (1, 'a@example.com')";

#[test]
fn requests_the_database_refuses_are_rejected_with_their_reason() {
    for (engine, _place) in [fresh_postgres("dl_class_rejected", &[]), fresh_sqlite(&[])] {
        let mut conn = engine.get().expect("checkout");
        conn.batch_execute(SCHEMA).expect("schema");
        for (sql, rejection) in [
            (
                "INSERT INTO parents VALUES (2, 'a@example.com')",
                Rejection::Duplicate,
            ),
            (
                "INSERT INTO children VALUES (1, 99, 1)",
                Rejection::Reference,
            ),
            ("INSERT INTO children VALUES (1, 1, -1)", Rejection::Invalid),
            (
                "INSERT INTO children (id, age) VALUES (1, 1)",
                Rejection::Invalid,
            ),
        ] {
            let error = failing(&mut conn, sql);
            assert_eq!(
                classify(&error),
                ErrorClass::Rejected(rejection),
                "{sql}: {error}"
            );
        }
        let missing = diesel::sql_query("SELECT id FROM parents WHERE id = 5")
            .get_result::<Id>(&mut *conn)
            .map(|row| row.id)
            .unwrap_err();
        assert_eq!(
            classify(&missing),
            ErrorClass::Rejected(Rejection::NotFound)
        );
        let bug = failing(&mut conn, "SELECT no_such_column FROM parents");
        assert_eq!(classify(&bug), ErrorClass::Bug, "{bug}");
    }
}

#[test]
fn a_value_its_column_cannot_hold_is_rejected_on_postgres() {
    let (engine, _db) = fresh_postgres("dl_class_value", &[]);
    let mut conn = engine.get().expect("checkout");
    conn.batch_execute(SCHEMA).expect("schema");
    for sql in [
        "INSERT INTO parents VALUES (2, 'far-too-long@example.com')",
        "INSERT INTO parents VALUES (99999999999, 'b@example.com')",
        "SELECT 'x'::integer",
    ] {
        let error = failing(&mut conn, sql);
        assert_eq!(
            classify(&error),
            ErrorClass::Rejected(Rejection::Invalid),
            "{sql}: {error}"
        );
    }
}

#[test]
fn a_demoted_primary_a_terminated_session_and_a_timeout_are_unavailable() {
    let (engine, _db) = fresh_postgres("dl_class_unavailable", &[]);
    let mut conn = engine.get().expect("checkout");
    conn.batch_execute(SCHEMA).expect("schema");
    // What a switchover's demoted primary answers to a write: 25006.
    let read_only = failing(
        &mut conn,
        "BEGIN READ ONLY; INSERT INTO parents VALUES (3, 'c@example.com')",
    );
    conn.batch_execute("ROLLBACK").expect("rollback");
    assert_eq!(classify(&read_only), ErrorClass::Unavailable, "{read_only}");
    let timeout = failing(
        &mut conn,
        "SET statement_timeout = '10ms'; SELECT pg_sleep(5)",
    );
    conn.batch_execute("RESET statement_timeout")
        .expect("reset");
    assert_eq!(classify(&timeout), ErrorClass::Unavailable, "{timeout}");
    // The session ended by the server (57P01, what a fast shutdown or a failover does).
    let pid = query_text(&mut conn, "SELECT pg_backend_pid()::text AS value");
    admin()
        .query(&format!("SELECT pg_terminate_backend({pid})"))
        .expect("terminate");
    let terminated = failing(&mut conn, "SELECT 1");
    assert_eq!(
        classify(&terminated),
        ErrorClass::Unavailable,
        "{terminated}"
    );
}

#[test]
fn a_pool_timeout_and_a_server_that_is_not_there_are_unavailable() {
    let (engine, _db) = fresh_postgres("dl_class_pool", &[("DATABASE_POOL_TIMEOUT", "200ms")]);
    let held: Vec<_> = (0..4).map(|_| engine.get().expect("checkout")).collect();
    let timeout = engine.get().map(|_| ()).unwrap_err();
    assert!(
        matches!(timeout, datalayer::Error::PoolTimeout { .. }),
        "{timeout}"
    );
    assert_eq!(timeout.class(), ErrorClass::Unavailable);
    drop(held);
    let port = closed_port();
    let nobody = Settings::from_pairs([
        (
            "DATABASE_URL",
            format!("postgres://app@127.0.0.1:{port}/app"),
        ),
        ("DATABASE_CONNECT_DEADLINE", "0s".into()),
    ])
    .expect("settings");
    let refused = Engine::connect(&nobody).map(|_| ()).unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Unavailable, "{refused}");
}

#[test]
fn a_connect_refusal_that_will_not_go_away_is_a_bug_of_the_settings() {
    let missing = postgres_settings("dl_class_no_such_database", &[]);
    let error = Engine::connect(&missing).map(|_| ()).unwrap_err();
    assert_eq!(error.class(), ErrorClass::Bug, "{error}");
    let config = Settings::from_pairs([("DATABASE_POOL_MAX_SIZE", "zero")]).unwrap_err();
    assert_eq!(config.class(), ErrorClass::Bug);
}

#[test]
fn conflicts_between_transactions_are_conflicts() {
    let (engine, _db) = fresh_postgres("dl_class_conflict", &[]);
    let (mut a, mut b) = (engine.get().expect("a"), engine.get().expect("b"));
    a.batch_execute(SCHEMA).expect("schema");
    a.batch_execute("INSERT INTO parents VALUES (2, 'b@example.com')")
        .expect("row");
    // Write skew under SERIALIZABLE: the second COMMIT is refused with 40001.
    for conn in [&mut a, &mut b] {
        conn.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM parents")
            .expect("begin");
    }
    a.batch_execute("UPDATE parents SET email = 'x@example.com' WHERE id = 1")
        .expect("a writes");
    b.batch_execute("UPDATE parents SET email = 'y@example.com' WHERE id = 2")
        .expect("b writes");
    a.batch_execute("COMMIT").expect("a commits");
    let serialization = failing(&mut b, "COMMIT");
    assert_eq!(
        classify(&serialization),
        ErrorClass::Conflict,
        "{serialization}"
    );
    // A deadlock: a holds row 1 and wants 2, b holds row 2 and wants 1.
    a.batch_execute("BEGIN; UPDATE parents SET email = 'p@example.com' WHERE id = 1")
        .expect("a locks 1");
    b.batch_execute("BEGIN; UPDATE parents SET email = 'q@example.com' WHERE id = 2")
        .expect("b locks 2");
    let waiter = std::thread::spawn(move || {
        let result = a.batch_execute("UPDATE parents SET email = 'r@example.com' WHERE id = 2");
        let _ = a.batch_execute("ROLLBACK");
        result
    });
    let second = b.batch_execute("UPDATE parents SET email = 's@example.com' WHERE id = 1");
    let _ = b.batch_execute("ROLLBACK");
    let first = waiter.join().expect("thread");
    let deadlock = first
        .err()
        .or(second.err())
        .expect("one of them is the deadlock victim");
    assert_eq!(classify(&deadlock), ErrorClass::Conflict, "{deadlock}");
}

#[test]
fn a_busy_sqlite_database_is_a_conflict() {
    let (engine, _dir) = fresh_sqlite(&[]);
    let (mut a, mut b) = (engine.get().expect("a"), engine.get().expect("b"));
    a.batch_execute("CREATE TABLE t (n INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
        .expect("a holds the write lock");
    let busy = failing(&mut b, "PRAGMA busy_timeout = 0; BEGIN IMMEDIATE");
    assert_eq!(classify(&busy), ErrorClass::Conflict, "{busy}");
    a.batch_execute("COMMIT").expect("commit");
}

/// A refusal that will not go away fails at once rather than after DATABASE_CONNECT_DEADLINE
/// (30 s of retries before): a service pg_service.conf does not define.
#[test]
fn a_service_that_is_not_defined_fails_at_once() {
    let settings = Settings::from_pairs([(
        "DATABASE_URL",
        "postgres://app@127.0.0.1/app?service=dl_no_such_service",
    )])
    .expect("settings");
    let began = std::time::Instant::now();
    let error = Engine::connect(&settings).map(|_| ()).unwrap_err();
    assert!(
        began.elapsed() < std::time::Duration::from_secs(10),
        "retried for {:.1?}: {error}",
        began.elapsed()
    );
    assert!(error.to_string().contains("pg_service.conf"), "{error}");
    assert_eq!(error.class(), ErrorClass::Bug);
}
