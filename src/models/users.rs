//! The `users` table.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::ModelError as Error;
use crate::schema::users;
use datalayer::Conn;
use datalayer::dispatch;

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Unique email address.
    pub email: String,
    /// Name shown to other users.
    pub display_name: String,
    /// When the row was inserted (UTC).
    pub created_at: NaiveDateTime,
    /// When the row was last changed (UTC), kept current by a trigger on both backends.
    pub updated_at: NaiveDateTime,
}

/// A user to insert.
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = users)]
// No field is optional, so no column falls back to DEFAULT. Without this, Diesel wraps every
// value as "maybe DEFAULT", which marks the INSERT unsafe to cache: the server parsed and
// planned it on every call, and the engine inserted at 0.82 x pgbench's prepared insert.
#[diesel(treat_none_as_default_value = false)]
pub struct NewUser<'a> {
    /// Unique email address.
    pub email: &'a str,
    /// Name shown to other users.
    pub display_name: &'a str,
}

/// Changes to a user; `None` leaves a column as it is.
#[derive(Debug, Clone, Copy, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges<'a> {
    /// A new email address.
    pub email: Option<&'a str>,
    /// A new display name.
    pub display_name: Option<&'a str>,
}

/// Turns a unique violation on `users.email` into [`Error::EmailTaken`].
fn email_taken(error: DieselError) -> Error {
    if let DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) = &error {
        let on_email = info.constraint_name() == Some("users_email_key")
            || info.message().contains("users.email");
        if on_email {
            return Error::EmailTaken;
        }
    }
    Error::Database(error)
}

// Every query runs through `dispatch!`: compiled per backend, it costs what plain Diesel does
// (the MultiConnection path adds about 1.6 µs per query).

/// Inserts a user. A taken email address is [`Error::EmailTaken`].
pub fn create(conn: &mut Conn, new: &NewUser<'_>) -> Result<User, Error> {
    dispatch!(conn, |c| diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(c))
    .map_err(email_taken)
}

/// The user with this id, if any.
pub fn find(conn: &mut Conn, id: i64) -> Result<Option<User>, Error> {
    Ok(dispatch!(conn, |c| users::table
        .find(id)
        .select(User::as_select())
        .first(c)
        .optional())?)
}

/// The user with this email address, if any.
pub fn find_by_email(conn: &mut Conn, email: &str) -> Result<Option<User>, Error> {
    Ok(dispatch!(conn, |c| users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(c)
        .optional())?)
}

/// Applies `changes`, stamps `updated_at`, and returns the updated user, or `None` when there
/// is no such user. Changing to a taken email address is [`Error::EmailTaken`].
///
/// `updated_at` is set here as well as by the tables' triggers: SQLite's `RETURNING` shows the
/// row before its AFTER triggers run, and SQLite triggers cannot change `NEW`. The triggers
/// keep `updated_at` right for every other writer.
pub fn update(conn: &mut Conn, id: i64, changes: &UserChanges<'_>) -> Result<Option<User>, Error> {
    if changes.email.is_none() && changes.display_name.is_none() {
        return find(conn, id);
    }
    let now = super::utc_now();
    dispatch!(conn, |c| diesel::update(users::table.find(id))
        .set((changes, users::updated_at.eq(now)))
        .returning(User::as_returning())
        .get_result(c)
        .optional())
    .map_err(email_taken)
}

/// Deletes a user and, by cascade, their posts. Returns whether a user was deleted.
pub fn delete(conn: &mut Conn, id: i64) -> Result<bool, Error> {
    Ok(dispatch!(conn, |c| diesel::delete(users::table.find(id)).execute(c))? > 0)
}

/// How many users there are.
pub fn count(conn: &mut Conn) -> Result<i64, Error> {
    Ok(dispatch!(conn, |c| users::table.count().get_result(c))?)
}
