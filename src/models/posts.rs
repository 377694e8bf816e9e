//! The `posts` table.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::ModelError as Error;
use super::users::User;
use crate::schema::posts;
use datalayer::Conn;
use datalayer::dispatch;

/// A post row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Associations)]
#[diesel(table_name = posts)]
#[diesel(belongs_to(User, foreign_key = author_id))]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Post {
    /// Primary key.
    pub id: i64,
    /// The user who wrote it; deleting the user deletes the post.
    pub author_id: i64,
    /// Title.
    pub title: String,
    /// Body text.
    pub body: String,
    /// Whether it is visible to others.
    pub published: bool,
    /// When the row was inserted (UTC).
    pub created_at: NaiveDateTime,
    /// When it was first published (UTC).
    pub published_at: Option<NaiveDateTime>,
}

/// A post to insert (unpublished).
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = posts)]
// No field is optional, so no column falls back to DEFAULT. Without this, Diesel wraps every
// value as "maybe DEFAULT", which marks the INSERT unsafe to cache: the server parsed and
// planned it on every call, and the engine inserted at 0.82 x pgbench's prepared insert.
#[diesel(treat_none_as_default_value = false)]
pub struct NewPost<'a> {
    /// The author's user id.
    pub author_id: i64,
    /// Title.
    pub title: &'a str,
    /// Body text.
    pub body: &'a str,
}

/// Where a page of [`list_by_author`] ends: the last post's `created_at` and `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last post on the page.
    pub created_at: NaiveDateTime,
    /// `id` of the last post on the page.
    pub id: i64,
}

/// One page of posts, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The posts on this page.
    pub posts: Vec<Post>,
    /// Pass this as `after` for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Inserts a post. An author that does not exist is a foreign-key [`Error::Database`].
pub fn create(conn: &mut Conn, new: &NewPost<'_>) -> Result<Post, Error> {
    Ok(dispatch!(conn, |c| diesel::insert_into(posts::table)
        .values(new)
        .returning(Post::as_returning())
        .get_result(c))?)
}

/// The post with this id, if any.
pub fn find(conn: &mut Conn, id: i64) -> Result<Option<Post>, Error> {
    Ok(dispatch!(conn, |c| posts::table
        .find(id)
        .select(Post::as_select())
        .first(c)
        .optional())?)
}

/// Publishes a post, stamping `published_at` the first time; publishing again changes
/// nothing. Returns the post, or `None` when there is no such post.
pub fn publish(conn: &mut Conn, id: i64) -> Result<Option<Post>, Error> {
    let now = super::utc_now();
    let published = dispatch!(conn, |c| diesel::update(
        posts::table.find(id).filter(posts::published.eq(false))
    )
    .set((posts::published.eq(true), posts::published_at.eq(now)))
    .returning(Post::as_returning())
    .get_result(c)
    .optional())?;
    match published {
        Some(post) => Ok(Some(post)),
        None => find(conn, id),
    }
}

/// A user's posts, newest first (`created_at`, then `id`), `limit` at a time. Keyset
/// pagination: pass the previous page's `next` as `after`. Served by the
/// `posts (author_id, created_at)` index.
pub fn list_by_author(
    conn: &mut Conn,
    author_id: i64,
    after: Option<Cursor>,
    limit: u32,
) -> Result<Page, Error> {
    let limit = i64::from(limit.max(1));
    let mut posts: Vec<Post> = dispatch!(conn, |c| {
        let mut query = posts::table
            .filter(posts::author_id.eq(author_id))
            .select(Post::as_select())
            .order((posts::created_at.desc(), posts::id.desc()))
            .limit(limit + 1)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(
                posts::created_at.lt(after.created_at).or(posts::created_at
                    .eq(after.created_at)
                    .and(posts::id.lt(after.id))),
            );
        }
        query.load(c)
    })?;
    let more = posts.len() as i64 > limit;
    posts.truncate(limit as usize);
    let next = more.then(|| posts.last()).flatten().map(|last| Cursor {
        created_at: last.created_at,
        id: last.id,
    });
    Ok(Page { posts, next })
}

/// How many posts a user has.
pub fn count_by_author(conn: &mut Conn, author_id: i64) -> Result<i64, Error> {
    Ok(dispatch!(conn, |c| posts::table
        .filter(posts::author_id.eq(author_id))
        .count()
        .get_result(c))?)
}

/// Deletes a post. Returns whether a post was deleted.
pub fn delete(conn: &mut Conn, id: i64) -> Result<bool, Error> {
    Ok(dispatch!(conn, |c| diesel::delete(posts::table.find(id)).execute(c))? > 0)
}
