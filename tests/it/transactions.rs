//! `Engine::transaction`: transactions re-run when PostgreSQL aborts them (serialization
//! failure, deadlock) or the connection is lost before COMMIT; never after it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};

use datalayer::engine::transaction::{Isolation, TransactionError};
use datalayer::{Conn, Engine};
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Integer};

use crate::common::{fresh_postgres, fresh_sqlite, query_lines};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut Conn, sql: &str) -> Result<i64, DieselError> {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .map(|c| c.n)
}

/// Runs `work(thread index, attempt)` in `Engine::transaction` on two threads at once;
/// returns each thread's attempts.
fn two_at_once(
    engine: &Arc<Engine>,
    work: impl Fn(&mut Conn, usize, u32) -> Result<(), DieselError> + Send + Sync + 'static,
) -> Vec<u32> {
    let work = Arc::new(work);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (engine, work) = (Arc::clone(engine), Arc::clone(&work));
            std::thread::spawn(move || {
                let attempts = AtomicU32::new(0);
                engine
                    .transaction(Isolation::Serializable, |conn| {
                        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                        work(conn, i, attempt)
                    })
                    .expect("committed in the end");
                attempts.load(Ordering::SeqCst)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect()
}

#[test]
fn a_serialization_failure_is_run_again_and_sees_the_other_commit() {
    let (engine, _db) = fresh_postgres("dl_tx_serial", &[]);
    engine
        .get()
        .expect("checkout")
        .batch_execute(
            "CREATE TABLE doctors (id INTEGER PRIMARY KEY, on_call BOOLEAN NOT NULL);
             INSERT INTO doctors VALUES (1, true), (2, true)",
        )
        .expect("setup");
    let engine = Arc::new(engine);
    let barrier = Arc::new(Barrier::new(2));
    // Write skew: each doctor goes off call if another is on call. Serializable, only one may.
    let attempts = two_at_once(&engine, move |conn, i, attempt| {
        let on_call = count(conn, "SELECT count(*) AS n FROM doctors WHERE on_call")?;
        if attempt == 1 {
            barrier.wait(); // both have read before either writes
        }
        if on_call >= 2 {
            conn.batch_execute(&format!(
                "UPDATE doctors SET on_call = false WHERE id = {}",
                i + 1
            ))?;
        }
        Ok(())
    });
    let mut sorted = attempts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [1, 2],
        "one ran once, the other again: {attempts:?}"
    );
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT count(*)::text AS line FROM doctors WHERE on_call"
        ),
        ["1"],
        "exactly one doctor stays on call"
    );
}

#[test]
fn a_deadlock_is_run_again_and_both_transactions_apply() {
    let (engine, _db) = fresh_postgres("dl_tx_deadlock", &[]);
    engine
        .get()
        .expect("checkout")
        .batch_execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT INTO accounts VALUES (1, 0), (2, 0)",
        )
        .expect("setup");
    let engine = Arc::new(engine);
    let barrier = Arc::new(Barrier::new(2));
    // Each locks its first row, then wants the other's: PostgreSQL aborts one of them.
    let attempts = two_at_once(&engine, move |conn, i, attempt| {
        let (first, second) = if i == 0 { (1, 2) } else { (2, 1) };
        conn.batch_execute(&format!("UPDATE accounts SET n = n + 1 WHERE id = {first}"))?;
        if attempt == 1 {
            barrier.wait();
        }
        conn.batch_execute(&format!(
            "UPDATE accounts SET n = n + 1 WHERE id = {second}"
        ))
    });
    assert_eq!(
        attempts.iter().sum::<u32>(),
        3,
        "one deadlock victim ran again: {attempts:?}"
    );
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT string_agg(n::text, ',' ORDER BY id) AS line FROM accounts"
        ),
        ["2,2"]
    );
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

fn terminate(pid: i32) {
    crate::common::admin()
        .query(&format!("SELECT pg_terminate_backend({pid})"))
        .expect("terminate");
}

#[test]
fn a_connection_lost_before_commit_is_run_again_but_never_after_commit_was_sent() {
    let (engine, _db) = fresh_postgres("dl_tx_lost", &[]);
    engine
        .get()
        .expect("checkout")
        .batch_execute("CREATE TABLE events (id SERIAL PRIMARY KEY)")
        .expect("setup");
    // Lost mid-transaction: run again on a new connection; the row is written once.
    let attempts = AtomicU32::new(0);
    engine
        .transaction(Isolation::ReadCommitted, |conn: &mut Conn| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            conn.batch_execute("INSERT INTO events DEFAULT VALUES")?;
            if attempt == 1 {
                let me: Pid =
                    diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(conn)?;
                terminate(me.pid);
                conn.batch_execute("SELECT 1")?; // fails: the connection is gone
            }
            Ok::<_, DieselError>(())
        })
        .expect("committed on the second attempt");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_lines(&mut conn, "SELECT count(*)::text AS line FROM events"),
        ["1"]
    );
    drop(conn);

    // Lost when COMMIT goes out: the outcome is unknown, so it is not run again.
    let attempts = AtomicU32::new(0);
    let error = engine
        .transaction(Isolation::ReadCommitted, |conn: &mut Conn| {
            attempts.fetch_add(1, Ordering::SeqCst);
            conn.batch_execute("INSERT INTO events DEFAULT VALUES")?;
            let me: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(conn)?;
            terminate(me.pid);
            Ok::<_, DieselError>(())
        })
        .expect_err("the commit cannot go through");
    assert!(
        matches!(error, TransactionError::CommitOutcomeUnknown { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("whether the transaction committed is unknown")
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "never run again after COMMIT"
    );
}

#[test]
fn on_sqlite_transactions_take_the_write_lock_at_begin() {
    use diesel::Connection;
    let (engine, _dir) = fresh_sqlite(&[]);
    engine
        .get()
        .expect("checkout")
        .batch_execute("CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0)")
        .expect("setup");
    let path = match &engine.settings().target {
        datalayer::config::Target::Sqlite(sqlite) => sqlite.path.clone(),
        datalayer::config::Target::Postgres(_) => unreachable!(),
    };
    // Having only read, the transaction already holds the write lock: another writer cannot
    // begin (a deferred transaction would take it only at its first write, and two of them
    // reading then writing at once deadlock on the upgrade).
    let other = engine
        .transaction(Isolation::Serializable, |conn: &mut Conn| {
            count(conn, "SELECT n AS n FROM counter")?;
            let mut other = diesel::SqliteConnection::establish(&path.to_string_lossy())
                .expect("a second connection");
            other.batch_execute("PRAGMA busy_timeout = 0")?;
            Ok::<_, DieselError>(other.batch_execute("BEGIN IMMEDIATE"))
        })
        .expect("committed");
    let error = other.expect_err("the write lock is held");
    assert!(error.to_string().contains("database is locked"), "{error}");
}
