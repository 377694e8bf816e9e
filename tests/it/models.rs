//! The models on both backends: CRUD, updated_at, unique email, cascade, publish, keyset pages.

use blog::models::ModelError as Error;
use blog::models::posts::{self, Cursor, NewPost};
use blog::models::users::{self, NewUser, UserChanges};
use chrono::NaiveDate;
use diesel::connection::SimpleConnection;

use crate::common::{migrated_engines, query_lines};

fn new_user<'a>(email: &'a str) -> NewUser<'a> {
    NewUser {
        email,
        display_name: "Ada",
    }
}

#[test]
fn user_crud() {
    for engine in migrated_engines() {
        let conn = &mut engine.get().expect("checkout");
        let ada = users::create(conn, &new_user("ada@example.com")).expect("create");
        assert_eq!(ada.email, "ada@example.com");
        assert_eq!(ada.created_at, ada.updated_at);
        assert_eq!(users::find(conn, ada.id).expect("find"), Some(ada.clone()));
        assert_eq!(
            users::find_by_email(conn, "ada@example.com").expect("by email"),
            Some(ada.clone())
        );
        assert_eq!(
            users::find_by_email(conn, "nobody@example.com").expect("by email"),
            None
        );
        assert_eq!(users::find(conn, ada.id + 1000).expect("find"), None);
        assert_eq!(users::count(conn).expect("count"), 1);

        let changes = UserChanges {
            display_name: Some("Ada L."),
            ..UserChanges::default()
        };
        let renamed = users::update(conn, ada.id, &changes)
            .expect("update")
            .expect("exists");
        assert_eq!(
            (renamed.display_name.as_str(), renamed.email.as_str()),
            ("Ada L.", "ada@example.com")
        );
        assert_eq!(
            users::update(conn, ada.id + 1000, &changes).expect("update"),
            None
        );
        assert_eq!(
            users::update(conn, ada.id, &UserChanges::default()).expect("no-op"),
            Some(renamed)
        );

        assert!(users::delete(conn, ada.id).expect("delete"));
        assert!(!users::delete(conn, ada.id).expect("delete again"));
        assert_eq!(users::count(conn).expect("count"), 0);
    }
}

#[test]
fn updated_at_is_maintained_by_the_database() {
    for engine in migrated_engines() {
        let conn = &mut engine.get().expect("checkout");
        let ada = users::create(conn, &new_user("ada@example.com")).expect("create");
        // An UPDATE that sets updated_at itself keeps that value...
        conn.batch_execute("UPDATE users SET updated_at = '2000-01-01 00:00:00'")
            .expect("backdate");
        let old = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("date");
        assert_eq!(
            users::find(conn, ada.id)
                .expect("find")
                .expect("row")
                .updated_at,
            old
        );
        // ...any other UPDATE, even one outside the models, moves it to now (the trigger)...
        conn.batch_execute("UPDATE users SET display_name = 'Countess'")
            .expect("raw update");
        let raw = users::find(conn, ada.id).expect("find").expect("row");
        assert!(raw.updated_at >= ada.created_at, "{raw:?}");
        // ...and so does the model's update, whose returned row is what is stored.
        conn.batch_execute("UPDATE users SET updated_at = '2000-01-01 00:00:00'")
            .expect("backdate");
        let changes = UserChanges {
            display_name: Some("Ada"),
            ..UserChanges::default()
        };
        let changed = users::update(conn, ada.id, &changes)
            .expect("update")
            .expect("row");
        assert!(changed.updated_at >= raw.updated_at, "{changed:?}");
        assert_eq!(users::find(conn, ada.id).expect("find"), Some(changed));
    }
}

#[test]
fn a_taken_email_is_its_own_error() {
    for engine in migrated_engines() {
        let conn = &mut engine.get().expect("checkout");
        users::create(conn, &new_user("ada@example.com")).expect("create");
        let grace = users::create(conn, &new_user("grace@example.com")).expect("create");
        let error = users::create(conn, &new_user("ada@example.com")).expect_err("duplicate");
        assert!(matches!(error, Error::EmailTaken), "{error:?}");
        let steal = UserChanges {
            email: Some("ada@example.com"),
            ..UserChanges::default()
        };
        let error = users::update(conn, grace.id, &steal).expect_err("duplicate");
        assert!(matches!(error, Error::EmailTaken), "{error:?}");
        assert!(
            !error.to_string().contains("ada@"),
            "personal data stays out of messages"
        );
        assert_eq!(users::count(conn).expect("count"), 2);
    }
}

#[test]
fn posts_cascade_publish_and_reject_unknown_authors() {
    for engine in migrated_engines() {
        let conn = &mut engine.get().expect("checkout");
        let ada = users::create(conn, &new_user("ada@example.com")).expect("create");
        let post = posts::create(
            conn,
            &NewPost {
                author_id: ada.id,
                title: "t",
                body: "b",
            },
        )
        .expect("post");
        assert!(!post.published && post.published_at.is_none());
        assert_eq!(
            posts::find(conn, post.id).expect("find"),
            Some(post.clone())
        );

        let published = posts::publish(conn, post.id)
            .expect("publish")
            .expect("exists");
        assert!(published.published);
        let stamped = published.published_at.expect("stamped");
        let again = posts::publish(conn, post.id)
            .expect("publish again")
            .expect("exists");
        assert_eq!(
            again.published_at,
            Some(stamped),
            "publishing twice keeps the first stamp"
        );
        assert_eq!(posts::publish(conn, post.id + 1000).expect("publish"), None);

        let orphan = posts::create(
            conn,
            &NewPost {
                author_id: ada.id + 1000,
                title: "t",
                body: "b",
            },
        );
        assert!(
            matches!(
                &orphan,
                Err(Error::Database(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                    _
                )))
            ),
            "{orphan:?}"
        );

        posts::create(
            conn,
            &NewPost {
                author_id: ada.id,
                title: "t2",
                body: "b",
            },
        )
        .expect("post");
        assert_eq!(posts::count_by_author(conn, ada.id).expect("count"), 2);
        assert!(users::delete(conn, ada.id).expect("delete"));
        assert_eq!(
            posts::count_by_author(conn, ada.id).expect("count"),
            0,
            "ON DELETE CASCADE"
        );
        assert_eq!(posts::find(conn, post.id).expect("find"), None);
    }
}

#[test]
fn keyset_pages_cover_every_post_once_newest_first() {
    for engine in migrated_engines() {
        let conn = &mut engine.get().expect("checkout");
        let ada = users::create(conn, &new_user("ada@example.com")).expect("create");
        let grace = users::create(conn, &new_user("grace@example.com")).expect("create");
        posts::create(
            conn,
            &NewPost {
                author_id: grace.id,
                title: "other",
                body: "",
            },
        )
        .expect("post");
        // Several posts share a created_at (one statement), so ties are broken by id.
        conn.batch_execute(&format!(
            "INSERT INTO posts (author_id, title, body, created_at) VALUES
               ({id}, 'a', '', '2026-01-01 00:00:00'), ({id}, 'b', '', '2026-01-01 00:00:00'),
               ({id}, 'c', '', '2026-01-02 00:00:00'), ({id}, 'd', '', '2026-01-01 00:00:00'),
               ({id}, 'e', '', '2025-12-31 23:59:59.5')",
            id = ada.id
        ))
        .expect("insert");
        let mut seen = Vec::new();
        let mut after: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            let page = posts::list_by_author(conn, ada.id, after, 2).expect("page");
            pages += 1;
            assert!(page.posts.len() <= 2);
            seen.extend(
                page.posts
                    .iter()
                    .map(|p| (p.created_at, p.id, p.title.clone())),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let titles: Vec<&str> = seen.iter().map(|(_, _, t)| t.as_str()).collect();
        assert_eq!(
            titles,
            ["c", "d", "b", "a", "e"],
            "newest first, ties by id descending"
        );
        let mut sorted = seen.clone();
        sorted.sort_by_key(|(created_at, id, _)| std::cmp::Reverse((*created_at, *id)));
        assert_eq!(seen, sorted);
        let empty = posts::list_by_author(conn, ada.id + 1000, None, 2).expect("page");
        assert!(empty.posts.is_empty() && empty.next.is_none());
    }
}

/// Every model query is a cached prepared statement on PostgreSQL: after several calls, the
/// connection holds exactly one server-side statement per query, and none went through the
/// unnamed statement (which the server parses and plans again on each call).
#[test]
fn model_queries_are_prepared_once_per_connection() {
    let engines = migrated_engines();
    let engine = &engines[0];
    let conn = &mut engine.get().expect("checkout");
    for n in 0..3 {
        let user = users::create(conn, &new_user(&format!("u{n}@example.com"))).expect("create");
        users::find(conn, user.id).expect("find");
        let post = NewPost {
            author_id: user.id,
            title: "t",
            body: "b",
        };
        posts::create(conn, &post).expect("post");
    }
    let statements = query_lines(
        conn,
        "SELECT left(statement, 22) || ' x' || count(*) AS line FROM pg_prepared_statements \
         WHERE statement LIKE 'INSERT %' OR statement LIKE 'SELECT \"users\".%' \
         GROUP BY statement ORDER BY 1",
    );
    assert_eq!(
        statements,
        [
            "INSERT INTO \"posts\" (\" x1",
            "INSERT INTO \"users\" (\" x1",
            "SELECT \"users\".\"id\", \" x1",
        ]
    );
}
