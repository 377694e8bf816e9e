//! The example server's HTTP layer (`examples/blocking_server/http.rs`, compiled in here) with
//! handlers of the test's own: a handler that panics gives its slot back, and a liveness
//! probe is answered while every slot is busy.

#[path = "../../examples/blocking_server/http.rs"]
#[allow(dead_code, reason = "the server uses all of it; the tests, part")]
mod http;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use http::{Limits, Request, Response};

use crate::server::try_http;

fn ok(status: u16) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: "{}".into(),
        retry_after: false,
    }
}

/// Serves `handle` on a free port until the returned flag is set.
fn serve(
    limits: Limits,
    handle: impl Fn(Request) -> Response + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || http::serve(listener, limits, &flag, Arc::new(handle)));
    (addr, stop)
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    try_http(addr, "GET", path, "", Duration::from_secs(10))
        .map(|reply| reply.status)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn a_handler_that_panics_answers_500_and_gives_its_slot_back() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, stop) = serve(limits, |request| {
        if request.target == "/boom" {
            panic!("a bug in a handler");
        }
        ok(200)
    });
    // Ten panics through two slots: each is a 500, and the slots come back every time.
    for _ in 0..10 {
        assert_eq!(get(addr, "/boom"), 500);
    }
    assert_eq!(get(addr, "/fine"), 200, "the slots were all given back");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn the_liveness_probe_is_answered_while_every_slot_is_busy() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new((Mutex::new(0), Condvar::new()));
    let (g, e) = (Arc::clone(&gate), Arc::clone(&entered));
    let (addr, stop) = serve(limits, move |request| {
        if request.target == "/slow" {
            *e.0.lock().expect("entered") += 1;
            e.1.notify_all();
            let (open, wake) = &*g;
            let mut open = open.lock().expect("gate");
            while !*open {
                open = wake.wait(open).expect("gate");
            }
        }
        ok(200)
    });
    // Two requests hold both slots (as requests waiting on a dry pool would).
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(addr, "/slow")))
        .collect();
    {
        let (count, wake) = &*entered;
        let mut count = count.lock().expect("entered");
        while *count < 2 {
            count = wake.wait(count).expect("entered");
        }
    }
    assert_eq!(
        get(addr, "/livez"),
        200,
        "liveness does not depend on the slots"
    );
    assert_eq!(get(addr, "/other"), 503, "anything else waits for a slot");
    *gate.0.lock().expect("gate") = true;
    gate.1.notify_all();
    for request in slow {
        assert_eq!(request.join().expect("slow request"), 200);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}
