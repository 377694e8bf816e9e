//! A blocking HTTP server linking datalayer: what a real service does with it.
//!
//! Boot: settings (environment, then `./.env`), engine, migrations (ledger; lock and pending
//! migrations when there are any; drift check, in the background by default).
//! Then it serves JSON, a thread per connection (at most 64, each request under a 10 s deadline,
//! bodies up to 1 MiB; 16 more that answer only `/livez`, so that a liveness probe never waits
//! on a busy server; a handler's panic is a 500 and frees its slot: see `http.rs` for why not
//! tiny_http):
//!
//! - `GET /livez`: 200 while the process serves (liveness: says nothing of the database)
//! - `GET /readyz`: 200 once booted (migrations done) while the pool hands out a working
//!   connection within 500 ms, else 503 (readiness)
//! - `GET /healthz`: ping (at most 2 s), pool state, the boot's schema drift check (the
//!   differences it found, `[]` when none), and the read replica's state when there is one; 503 when the primary cannot serve (down, or no node accepts writes during a
//!   failover), 200 with `"status": "degraded"` while reads fall back from the replica
//! - `GET` requests read through `Engine::read` (the replica when configured: a read right
//!   after a write may not see it yet, by up to `DATABASE_REPLICA_MAX_LAG`); writes use `get`
//! - `POST /users` `{"email", "display_name"}`: 201 with the user; 409 for a taken email
//! - `GET /users/{id}`; `GET /users/{id}/posts?after=CURSOR&limit=N` (keyset pagination)
//! - `POST /users/{id}/posts` `{"title", "body"}`
//! - `GET /metrics`: the pool's metrics (OpenTelemetry's names) in Prometheus text format, by
//!   `metrics-exporter-prometheus`
//!
//! Errors: 400 with a message for bad JSON or fields (a NUL character included: PostgreSQL text
//! cannot hold one), 404, 408 for a request that does not arrive in time, 411 for a chunked
//! body, 413 for a body over 1 MiB (refused before it is read); database errors by their
//! class (`datalayer::error::ErrorClass`): 503 with `Retry-After` while the database is
//! unavailable (a switchover's read-only primary, a terminated session, an outage, a pool
//! timeout), 409 for a conflict (with `Retry-After`) or a duplicate, 422 for a value or a
//! reference the database refused, 500 otherwise (details only in the log). Listens on
//! `--listen ADDR`, else `SERVER_ADDR`, else 127.0.0.1:8080 (`SERVER_REQUEST_TIMEOUT`, in
//! seconds, above 0 and at most 3600, changes the request deadline; any other value exits 2);
//! stops on SIGINT or SIGTERM (`signal-hook`) after
//! the requests in flight, returning its connections.
//!
//! `cargo run --example blocking_server -- --listen 127.0.0.1:8080`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use blog::models::ModelError;
use blog::models::posts::{self, Cursor, NewPost, Post};
use blog::models::users::{self, NewUser, User};
use chrono::NaiveDateTime;
use datalayer::engine::transaction::{DatabaseFailure, Isolation, TransactionError};
use datalayer::error::ErrorClass;
use datalayer::migrations::{DriftCheck, DriftOutcome};
use datalayer::{Engine, Error};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
mod http;

use http::{Limits, Request, Response};

/// How long `/healthz` waits for a connection (less if opening one fails): a probe must get an
/// answer while the database is down or failing over, not hang for the pool timeout.
const HEALTH_LIMIT: Duration = Duration::from_secs(2);

/// How long `/readyz` waits for a connection: a readiness probe answers within its own
/// timeout (Kubernetes' default is 1 s) whatever the database does.
const READY_LIMIT: Duration = Duration::from_millis(500);

/// A JSON reply.
struct Reply {
    status: u16,
    body: Value,
    retry_after: bool,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        retry_after: false,
    }
}

fn error(status: u16, message: &str) -> Reply {
    reply(status, json!({ "error": message }))
}

/// Maps an error to what a client expects, by its class ([`ErrorClass`]): 503 with
/// `Retry-After` while the database is unavailable (a switchover, an outage, a pool timeout),
/// 409 for a conflict that outlasted `Engine::transaction`'s retries (also with `Retry-After`)
/// or a duplicate, 422 for a value or reference the database refused, 404, and 500 for the
/// rest (details only in the log).
fn failure(e: &dyn DatabaseFailure, what: &dyn std::fmt::Display) -> Reply {
    let class = e.class();
    match class {
        ErrorClass::Unavailable | ErrorClass::Conflict => {
            tracing::warn!("request failed ({class}): {what}");
            Reply {
                retry_after: true,
                ..error(class.http_status(), &class.to_string())
            }
        }
        ErrorClass::Rejected(_) => {
            tracing::info!("request refused ({class}): {what}");
            error(class.http_status(), &class.to_string())
        }
        _ => {
            tracing::error!("request failed: {what}");
            error(500, "internal error")
        }
    }
}

/// [`failure`] for datalayer's errors (checkouts).
fn unavailable(e: &Error) -> Reply {
    failure(e, e)
}

/// [`failure`] for a model's errors, with the model's own words for a taken email.
fn model_failure(e: &ModelError) -> Reply {
    match e {
        ModelError::EmailTaken => error(409, "a user with this email address already exists"),
        other => failure(other, other),
    }
}

fn time(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn user_json(u: &User) -> Value {
    json!({ "id": u.id, "email": u.email, "display_name": u.display_name,
            "created_at": time(&u.created_at), "updated_at": time(&u.updated_at) })
}

fn post_json(p: &Post) -> Value {
    json!({ "id": p.id, "author_id": p.author_id, "title": p.title, "body": p.body,
            "published": p.published, "created_at": time(&p.created_at),
            "published_at": p.published_at.as_ref().map(time) })
}

/// A cursor as `<created_at micros since the epoch>.<id>`.
fn cursor_text(c: &Cursor) -> String {
    format!("{}.{}", c.created_at.and_utc().timestamp_micros(), c.id)
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    use chrono::Datelike;
    let (micros, id) = text.split_once('.')?;
    let created_at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
    // A cursor comes from a row's timestamp; years PostgreSQL and SQLite both hold only.
    if !(1..=9999).contains(&created_at.year()) {
        return None;
    }
    Some(Cursor {
        created_at,
        id: id.parse().ok()?,
    })
}

/// A required, non-empty string field of at most `max` characters.
fn field<'a>(body: &'a Value, name: &str, max: usize) -> Result<&'a str, Reply> {
    match body.get(name).and_then(Value::as_str).map(str::trim) {
        // PostgreSQL text cannot hold NUL: say so, naming the field, instead of a 500.
        Some(v) if v.contains('\0') => Err(error(
            400,
            &format!("`{name}` must not contain NUL characters (\\u0000)"),
        )),
        Some(v) if !v.is_empty() && v.chars().count() <= max => Ok(v),
        _ => Err(error(
            400,
            &format!("`{name}` must be a non-empty string of at most {max} characters"),
        )),
    }
}

/// A probe's 503 with `Retry-After`: its status word and the error as a request would see it.
fn probe_failed(status: &str, e: &Error) -> Reply {
    Reply {
        retry_after: true,
        ..reply(
            503,
            json!({ "status": status, "error": unavailable(e).body["error"] }),
        )
    }
}

fn json_body(request: &Request) -> Result<Value, Reply> {
    let text = std::str::from_utf8(&request.body)
        .map_err(|_| error(400, "the body must be UTF-8 JSON"))?;
    serde_json::from_str(text).map_err(|e| error(400, &format!("invalid JSON: {e}")))
}

/// The boot's drift check (`DATABASE_SCHEMA_CHECK=warn` runs it after boot returns): the
/// differences it found, `"running"`, `"skipped"`, or why it failed.
fn schema_drift(drift: &DriftCheck) -> Value {
    match drift.outcome() {
        Some(DriftOutcome::Checked(differences)) => json!(differences),
        Some(DriftOutcome::Failed(why)) => json!({ "failed": why }),
        None => json!("running"),
        Some(DriftOutcome::Skipped) => json!("skipped"),
    }
}

/// What every request handler shares: the engine (a cheap handle), the boot's drift check
/// and the metrics.
struct App {
    engine: Engine,
    drift: DriftCheck,
    metrics: PrometheusHandle,
}

fn route(app: &App, request: &Request) -> Reply {
    let App {
        engine,
        drift,
        metrics,
    } = app;
    let url = request.target.clone();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method.as_str();
    let result = (|| -> Result<Reply, Reply> {
        let id = |text: &str| text.parse::<i64>().map_err(|_| error(404, "not found"));
        match (method, parts.as_slice()) {
            ("GET", ["healthz"]) => Ok(match engine.ping_within(HEALTH_LIMIT) {
                Ok(ping) => {
                    let replica = engine.replica_state();
                    let degraded = replica.as_ref().is_some_and(|r| !r.serving);
                    reply(
                        200,
                        json!({
                            "status": if degraded { "degraded" } else { "ok" },
                            "latency_ms": ping.latency.as_secs_f64() * 1e3,
                            "server": ping.server_version,
                            "pool": format!("{}", engine.state()),
                            "schema_drift": schema_drift(drift),
                            "replica": replica.map(|r| json!({
                                "target": r.target,
                                "serving": r.serving,
                                "reachable": r.reachable,
                                "lag_ms": r.lag.map(|lag| lag.as_secs_f64() * 1e3),
                                "reason": r.reason,
                                "fallbacks": r.fallbacks,
                                "pool": format!("{}", r.pool),
                            })),
                        }),
                    )
                }
                Err(e) => probe_failed("unavailable", &e),
            }),
            // Liveness: the process serves requests; it says nothing of the database, so that
            // an outage does not get every replica restarted.
            ("GET", ["livez"]) => Ok(reply(200, json!({ "status": "live" }))),
            // Readiness: booted (migrations done: the server listens only after) and the pool
            // hands out a working connection within READY_LIMIT.
            ("GET", ["readyz"]) => Ok(match engine.ping_within(READY_LIMIT) {
                Ok(_) => reply(200, json!({ "status": "ready" })),
                Err(e) => probe_failed("not ready", &e),
            }),
            ("GET", ["metrics"]) => Ok(Reply {
                status: 200,
                body: Value::String({
                    // The pool's gauges as they are now (the engine also records them every
                    // second on its own).
                    engine.record_metrics();
                    metrics.render()
                }),
                retry_after: false,
            }),
            ("POST", ["users"]) => {
                let body = json_body(request)?;
                let email = field(&body, "email", 254)?;
                if !email.contains('@') {
                    return Err(error(400, "`email` must be an email address"));
                }
                let display_name = field(&body, "display_name", 80)?;
                let mut conn = engine.get().map_err(|e| unavailable(&e))?;
                let user = users::create(
                    &mut conn,
                    &NewUser {
                        email,
                        display_name,
                    },
                )
                .map_err(|e| model_failure(&e))?;
                Ok(reply(201, user_json(&user)))
            }
            ("GET", ["users", user]) => {
                let mut conn = engine.read().map_err(|e| unavailable(&e))?;
                match users::find(&mut conn, id(user)?).map_err(|e| model_failure(&e))? {
                    Some(user) => Ok(reply(200, user_json(&user))),
                    None => Err(error(404, "no such user")),
                }
            }
            ("GET", ["users", user, "posts"]) => {
                let params: BTreeMap<&str, &str> =
                    query.split('&').filter_map(|p| p.split_once('=')).collect();
                let after = match params.get("after") {
                    Some(text) => Some(parse_cursor(text).ok_or_else(|| {
                        error(400, "`after` is not a cursor from a previous page")
                    })?),
                    None => None,
                };
                let limit = match params.get("limit") {
                    Some(text) => text
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| error(400, "`limit` must be 1 to 100"))?,
                    None => 20,
                };
                let author = id(user)?;
                let mut conn = engine.read().map_err(|e| unavailable(&e))?;
                if users::find(&mut conn, author)
                    .map_err(|e| model_failure(&e))?
                    .is_none()
                {
                    return Err(error(404, "no such user"));
                }
                let page = posts::list_by_author(&mut conn, author, after, limit)
                    .map_err(|e| model_failure(&e))?;
                Ok(reply(
                    200,
                    json!({
                        "posts": page.posts.iter().map(post_json).collect::<Vec<_>>(),
                        "next": page.next.as_ref().map(cursor_text),
                    }),
                ))
            }
            ("POST", ["users", user, "posts"]) => {
                let author = id(user)?;
                let body = json_body(request)?;
                let title = field(&body, "title", 200)?;
                let text = body
                    .get("body")
                    .and_then(Value::as_str)
                    .ok_or_else(|| error(400, "`body` must be a string"))?;
                // The author check and the insert in one transaction, run again if PostgreSQL
                // aborts it (a deadlock, a serialization failure, a connection lost before
                // COMMIT): `Ok(None)` is "no such user".
                let new = NewPost {
                    author_id: author,
                    title,
                    body: text,
                };
                let created =
                    engine.transaction(Isolation::ReadCommitted, |conn| {
                        match users::find(conn, author)? {
                            Some(_) => posts::create(conn, &new).map(Some),
                            None => Ok(None),
                        }
                    });
                let post = match created {
                    Ok(Some(post)) => post,
                    Ok(None) => return Err(error(404, "no such user")),
                    Err(TransactionError::Checkout(e)) => return Err(unavailable(&e)),
                    Err(TransactionError::Failed { error, .. }) => {
                        return Err(model_failure(&error));
                    }
                    // The outcome of COMMIT is unknown: unavailable, check before retrying.
                    Err(other) => return Err(failure(&other, &other)),
                };
                Ok(reply(201, post_json(&post)))
            }
            _ => Err(error(404, "not found")),
        }
    })();
    result.unwrap_or_else(|r| r)
}

fn response(reply: Reply) -> Response {
    let (body, content_type) = match reply.body {
        Value::String(text) if reply.status == 200 => (text, "text/plain; version=0.0.4"),
        body => (body.to_string(), "application/json"),
    };
    Response {
        status: reply.status,
        content_type,
        body,
        retry_after: reply.retry_after,
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("SERVER_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut limits = Limits::default();
    match request_timeout(std::env::var_os("SERVER_REQUEST_TIMEOUT")) {
        Ok(Some(deadline)) => limits.request_deadline = deadline,
        Ok(None) => {}
        Err(why) => {
            eprintln!("blocking_server: error: SERVER_REQUEST_TIMEOUT: {why}");
            return std::process::ExitCode::from(2);
        }
    }
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!("cannot install the metrics recorder: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // `install_recorder` leaves upkeep to the caller: without it every histogram sample (two
    // per request: the checkout's wait and use) is kept until `/metrics` is scraped, and a
    // server nobody scrapes grew by 1.4 MB a minute under load (scripts/soak).
    {
        let metrics = metrics.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    metrics.run_upkeep();
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the metrics upkeep thread: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let (engine, drift) = match boot() {
        Ok(booted) => booted,
        // The error on stderr, and the command line's exit status for it (2 configuration,
        // 3 database unreachable, 4 migration failed).
        Err(e) => return datalayer::cli::report(&e),
    };
    let listener = match std::net::TcpListener::bind(&listen) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            tracing::error!("cannot handle signal {signal}: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let listen = listener
        .local_addr()
        .map_or(listen, |address| address.to_string());
    tracing::info!(
        "listening on http://{listen} ({} at {})",
        engine.backend(),
        engine.target()
    );
    let handler = {
        let app = App {
            engine: engine.clone(),
            drift,
            metrics,
        };
        Arc::new(move |request: Request| response(route(&app, &request)))
    };
    if let Err(e) = http::serve(listener, limits, &stop, handler) {
        tracing::error!("serving stopped: {e}");
    }
    // No request is served any more: close the engine (waiting at most 5 s for connections
    // still checked out, and naming them), so that no backend of ours outlives the process.
    let state = engine.state();
    engine.close(Duration::from_secs(5));
    tracing::info!(
        "stopped; {} connection(s) were still checked out",
        state.in_use
    );
    std::process::ExitCode::SUCCESS
}

/// The longest request deadline: a client that takes an hour to send a request is not one.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// `SERVER_REQUEST_TIMEOUT`: seconds (`2`, `2.5`, `2s`), more than 0 and at most an hour.
fn request_timeout(value: Option<std::ffi::OsString>) -> Result<Option<Duration>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    let shown = text.escape_debug();
    text.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|d| !d.is_zero() && *d <= MAX_REQUEST_TIMEOUT)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "\"{shown}\" is not a number of seconds above 0 and at most {} (e.g. 10 or 2.5s)",
                MAX_REQUEST_TIMEOUT.as_secs()
            )
        })
}

fn boot() -> Result<(Engine, DriftCheck), Error> {
    // As the command line reads them: the environment, then ./.env; warnings on stderr.
    let settings = datalayer::cli::load_settings()?;
    let engine = Engine::connect(&settings)?;
    let report = blog::models::migrator().boot(&engine)?;
    tracing::info!("{} migration(s) applied", report.applied.len());
    Ok((engine, report.drift))
}
