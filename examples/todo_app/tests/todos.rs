//! The application's own tests, each on a database of its own (`datalayer::testing`), cloned
//! from a template its migrations built once. They need PostgreSQL: `DATABASE_URL` names the
//! server where the test databases are made (e.g. postgres://postgres@127.0.0.1:5432/postgres).

use datalayer::testing::TestDatabase;
use diesel::PgConnection;
use todo_app::models::{self, NewTodo};

fn database() -> TestDatabase<PgConnection> {
    TestDatabase::new_as(&todo_app::migrator()).unwrap_or_else(|e| {
        panic!(
            "{e}\nThese tests need PostgreSQL: set DATABASE_URL to a server where this role may \
             create databases (postgres://postgres@127.0.0.1:5432/postgres)"
        )
    })
}

#[test]
fn upsert_keeps_one_todo_per_title_with_jsonb_and_timestamptz() {
    let db = database();
    let mut conn = db.get().expect("checkout");
    let first = models::upsert(
        &mut conn,
        &NewTodo {
            title: "write the docs",
            details: serde_json::json!({ "estimate": "2h" }),
            tags: vec!["docs"],
        },
    )
    .expect("insert");
    let again = models::upsert(
        &mut conn,
        &NewTodo {
            title: "write the docs",
            details: serde_json::json!({ "estimate": "3h", "owner": "ada" }),
            tags: vec!["docs", "urgent"],
        },
    )
    .expect("ON CONFLICT DO UPDATE");
    assert_eq!(again.id, first.id);
    assert_eq!(again.details["owner"], "ada");
    assert_eq!(again.created_at, first.created_at);
    assert!(chrono::Utc::now() - first.created_at < chrono::TimeDelta::minutes(5));
    let open = models::open_tagged(&mut conn, "urgent").expect("open");
    assert_eq!(open, std::slice::from_ref(&again));
    let done = models::complete(&mut conn, again.id)
        .expect("complete")
        .expect("exists");
    assert!(done.done_at.is_some_and(|at| at >= done.created_at));
    assert!(
        models::open_tagged(&mut conn, "urgent")
            .expect("open")
            .is_empty()
    );
}

#[test]
fn each_test_starts_from_an_empty_table() {
    let db = database();
    let mut conn = db.get().expect("checkout");
    assert!(
        models::open_tagged(&mut conn, "docs")
            .expect("open")
            .is_empty()
    );
    let status = todo_app::migrator().status(db.engine()).expect("status");
    assert_eq!(
        status.applied,
        [
            "2026-11-26-000001_create_todos",
            "2026-11-26-000002_index_open_todos"
        ]
    );
}

#[test]
fn the_committed_fingerprint_catches_a_change_made_by_hand() {
    use datalayer::migrations::MigrationError;
    use diesel::connection::SimpleConnection;
    let db = database();
    let migrator = todo_app::migrator();
    let set = migrator
        .set(datalayer::config::Backend::Postgres)
        .expect("PostgreSQL migrations");
    assert!(
        set.fingerprint().is_some(),
        "migrations/schema.fingerprint is embedded"
    );
    assert!(
        migrator
            .boot(db.engine())
            .expect("boot")
            .drift
            .differences()
            .is_empty()
    );
    db.get()
        .expect("checkout")
        .batch_execute("ALTER TABLE todos ADD COLUMN priority INTEGER")
        .expect("a change behind the migrations' back");
    let mut strict = db.settings().clone();
    strict.migrations.schema_check = datalayer::config::SchemaCheck::Strict;
    let engine = datalayer::Engine::<PgConnection>::connect_as(&strict).expect("connect");
    let error = migrator.boot(&engine).expect_err("strict refuses drift");
    assert!(
        matches!(
            &error,
            datalayer::Error::Migration(MigrationError::SchemaDrift { differences })
                if differences == &["todos.priority: unexpected column"]
        ),
        "{error}"
    );
}
