//! A small blocking HTTP/1.1 server on `std::net`, one request per connection.
//!
//! The example used tiny_http until a hostile-input sweep showed what it cannot do: it
//! allocates a request's whole unread body when the request is dropped (a `Content-Length` of
//! 99999999999999 aborted the process), reads any body size, and has no read deadline, so
//! eight clients sending half a body held all eight workers and `/healthz` stopped answering.
//! Here, every connection gets its own thread (at most [`Limits::max_connections`]; one over
//! that is answered 503 at once), its head and body are read under a deadline (408 after it),
//! a body over the limit is refused with 413 before a byte of it is read, and a chunked body
//! with 411. Database work stays bounded by the engine's pool, not by the number of
//! connections, and a slow client only holds its own thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a connection may send, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest body accepted (1 MiB).
    pub max_body: usize,
    /// The largest request line and headers (16 KiB).
    pub max_head: usize,
    /// How long a whole request (head and body) may take to arrive.
    pub request_deadline: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections beyond `max_connections` read (each under a 1 s deadline) only to answer a
    /// request for `liveness_path`, so that a liveness probe never depends on how busy the
    /// server is; every other request among them gets 503.
    pub overflow_connections: usize,
    /// The liveness probe's path, answered 200 without calling the handler.
    pub liveness_path: &'static str,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 20,
            max_head: 16 << 10,
            request_deadline: Duration::from_secs(10),
            max_connections: 64,
            overflow_connections: 16,
            liveness_path: "/livez",
        }
    }
}

/// A request, read whole.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The target as sent: path and query.
    pub target: String,
    /// The body (at most [`Limits::max_body`]).
    pub body: Vec<u8>,
}

/// A response.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Adds `Retry-After: 1`.
    pub retry_after: bool,
}

impl Response {
    fn plain(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::json!({ "error": message }).to_string(),
            retry_after: false,
        }
    }
}

/// Accepts connections until `stop` is set, then waits (at most a request deadline and a
/// second) for the requests under way.
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    stop: &AtomicBool,
    handle: Arc<dyn Fn(Request) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    let overflow = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let (slot, handle) = match Slot::take(&active, limits.max_connections) {
            Some(slot) => (slot, Some(Arc::clone(&handle))),
            // Over the limit: a thread of the overflow that only answers liveness probes.
            None => match Slot::take(&overflow, limits.overflow_connections) {
                Some(slot) => (slot, None),
                None => {
                    let mut stream = stream;
                    let _ = write_response(&mut stream, &busy());
                    continue;
                }
            },
        };
        let spawned = std::thread::Builder::new()
            .name("http-connection".into())
            .spawn(move || {
                // The slot is given back when this thread ends, also by a panic.
                let _slot = slot;
                match handle {
                    Some(handle) => connection(stream, limits, handle.as_ref()),
                    None => connection(
                        stream,
                        Limits {
                            request_deadline: limits.request_deadline.min(Duration::from_secs(1)),
                            ..limits
                        },
                        &|request: Request| {
                            if request.method == "GET" && request.target == limits.liveness_path {
                                Response {
                                    status: 200,
                                    content_type: "application/json",
                                    body: r#"{"status":"live"}"#.into(),
                                    retry_after: false,
                                }
                            } else {
                                busy()
                            }
                        },
                    ),
                }
            });
        if spawned.is_err() {
            tracing::warn!("cannot start a thread for a connection");
        }
    }
    let deadline = Instant::now() + limits.request_deadline + Duration::from_secs(1);
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One of a limited number of connections, counted in `count` while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::SeqCst) >= limit {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn busy() -> Response {
    Response {
        retry_after: true,
        ..Response::plain(503, "too many connections; retry shortly")
    }
}

/// Serves the one request of a connection. A handler that panics gets its client a 500 (the
/// panic is logged by the panic hook); the connection's slot is given back either way.
fn connection(
    mut stream: TcpStream,
    limits: Limits,
    handle: &(dyn Fn(Request) -> Response + Sync),
) {
    let response = match read_request(&mut stream, limits) {
        Ok(request) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(request)))
            .unwrap_or_else(|_| Response::plain(500, "internal error")),
        Err(response) => response,
    };
    let _ = write_response(&mut stream, &response);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// One read of at most `room` more bytes into `buf`, before the deadline.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
    deadline: Instant,
) -> Result<(), Response> {
    let timed_out = || Response::plain(408, "the request took too long to arrive");
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    stream
        .set_read_timeout(Some(left))
        .map_err(|_| Response::plain(500, "internal error"))?;
    let mut chunk = [0u8; 8192];
    let room = room.min(chunk.len());
    match stream.read(&mut chunk[..room]) {
        Ok(0) => Err(Response::plain(400, "the connection closed mid-request")),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(timed_out())
        }
        Err(_) => Err(Response::plain(400, "the connection failed mid-request")),
    }
}

fn read_request(stream: &mut TcpStream, limits: Limits) -> Result<Request, Response> {
    stream
        .set_nonblocking(false)
        .map_err(|_| Response::plain(500, "internal error"))?;
    let deadline = Instant::now() + limits.request_deadline;
    // The head, in reads of what has arrived, at most `max_head` bytes; what came after it is
    // the start of the body.
    let mut buf = Vec::new();
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() >= limits.max_head {
            return Err(Response::plain(
                431,
                "the request line and headers are too large",
            ));
        }
        let room = limits.max_head - buf.len();
        read_some(stream, &mut buf, room, deadline)?;
    };
    let mut body = buf.split_off(end + 4);
    let head =
        String::from_utf8(buf).map_err(|_| Response::plain(400, "the headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err(Response::plain(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::plain(505, "only HTTP/1.x is served"));
    }
    let mut length: Option<usize> = None;
    let mut expects_continue = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::plain(400, "malformed header"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                // Digits only (`parse` takes "+2"), and one value: two that differ are how
                // requests are smuggled past a proxy that reads the other one.
                let parsed = value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| value.parse::<usize>().ok())
                    .flatten()
                    .ok_or_else(|| Response::plain(400, "Content-Length is not a number"))?;
                if length.is_some_and(|earlier| earlier != parsed) {
                    return Err(Response::plain(400, "two different Content-Length headers"));
                }
                length = Some(parsed);
            }
            "transfer-encoding" => {
                return Err(Response::plain(411, "send the body with a Content-Length"));
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expects_continue = true,
            _ => {}
        }
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body {
        return Err(Response::plain(
            413,
            &format!("the body is larger than {} bytes", limits.max_body),
        ));
    }
    if body.len() > length {
        return Err(Response::plain(
            400,
            "more data than Content-Length after the headers",
        ));
    }
    if expects_continue && body.len() < length {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    body.reserve_exact(length - body.len());
    while body.len() < length {
        let room = length - body.len();
        read_some(stream, &mut body, room, deadline)?;
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let retry = if response.retry_after {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(response.body.as_bytes())?;
    stream.flush()
}
