//! The `todos` table.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::schema::todos;

/// A todo.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = todos)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct Todo {
    /// Primary key.
    pub id: i64,
    /// Unique title.
    pub title: String,
    /// Free-form details (`jsonb`).
    pub details: serde_json::Value,
    /// Tags (`text[]`; PostgreSQL arrays may hold NULLs, so print-schema types the elements
    /// as nullable).
    pub tags: Vec<Option<String>>,
    /// When it was created (`timestamptz`).
    pub created_at: DateTime<Utc>,
    /// When it was done, if it is.
    pub done_at: Option<DateTime<Utc>>,
}

/// A todo to write.
#[derive(Debug, Insertable)]
#[diesel(table_name = todos)]
pub struct NewTodo<'a> {
    /// Unique title.
    pub title: &'a str,
    /// Free-form details.
    pub details: serde_json::Value,
    /// Tags.
    pub tags: Vec<&'a str>,
}

/// Creates the todo, or updates the details and tags of the one with this title (`INSERT ...
/// ON CONFLICT (title) DO UPDATE`).
pub fn upsert(conn: &mut PgConnection, new: &NewTodo<'_>) -> QueryResult<Todo> {
    diesel::insert_into(todos::table)
        .values(new)
        .on_conflict(todos::title)
        .do_update()
        .set((
            todos::details.eq(excluded(todos::details)),
            todos::tags.eq(excluded(todos::tags)),
        ))
        .returning(Todo::as_returning())
        .get_result(conn)
}

/// Marks a todo done now; `None` when there is no such todo.
pub fn complete(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Todo>> {
    diesel::update(todos::table.find(id))
        .set(todos::done_at.eq(diesel::dsl::now))
        .returning(Todo::as_returning())
        .get_result(conn)
        .optional()
}

/// Open todos carrying `tag`, oldest first.
pub fn open_tagged(conn: &mut PgConnection, tag: &str) -> QueryResult<Vec<Todo>> {
    todos::table
        .filter(todos::done_at.is_null())
        .filter(todos::tags.contains(vec![Some(tag)]))
        .order(todos::created_at)
        .select(Todo::as_select())
        .load(conn)
}
