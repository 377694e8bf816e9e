//! A small blocking TCP proxy between the engine and PostgreSQL that misbehaves on command:
//! pass traffic, refuse new connections (nothing listens), reset every open connection, drop
//! every byte while keeping sockets open, or add latency. Threads and std::net only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{INNER_IP, Netns};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Refuse,
    Discard,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    latency: Mutex<Duration>,
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn new(upstream: SocketAddr) -> Arc<Shared> {
        Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            latency: Mutex::new(Duration::ZERO),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    netns: Option<Arc<Netns>>,
}

impl FaultProxy {
    /// A proxy to `upstream` on a free local port, passing traffic.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("address");
        let shared = Shared::new(upstream);
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                accept_loop(addr, Some(listener), &shared, |client| {
                    connect(client, &shared)
                })
            })
        };
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
            netns: None,
        }
    }

    /// A proxy listening inside `netns` (on its side of the veth link), so that
    /// [`FaultProxy::blackhole`] can make packets vanish. Upstream connections are opened by a
    /// thread that stays in this namespace.
    pub fn start_in(upstream: SocketAddr, netns: Arc<Netns>) -> FaultProxy {
        let shared = Shared::new(upstream);
        let (clients, accepted) = std::sync::mpsc::channel::<TcpStream>();
        {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for client in accepted {
                    connect(client, &shared);
                }
            });
        }
        let (bound, address) = std::sync::mpsc::channel();
        let acceptor = {
            let (shared, netns) = (Arc::clone(&shared), Arc::clone(&netns));
            std::thread::spawn(move || {
                netns.enter_current_thread();
                let listener = TcpListener::bind((INNER_IP, 0)).expect("bind in the namespace");
                let addr = listener.local_addr().expect("address");
                bound.send(addr).expect("report the address");
                accept_loop(addr, Some(listener), &shared, |client| {
                    let _ = clients.send(client);
                })
            })
        };
        FaultProxy {
            addr: address.recv().expect("the proxy's address"),
            shared,
            acceptor: Some(acceptor),
            netns: Some(netns),
        }
    }

    /// Drop every byte and, behind a namespace, take the link down so nothing is even
    /// acknowledged: the peer has vanished. `pass` undoes both.
    pub fn blackhole(&self) {
        self.set(Mode::Discard);
        if let Some(netns) = &self.netns {
            netns.cut();
        }
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// Pass traffic (and listen again after `refuse`, bring the link back after `blackhole`).
    pub fn pass(&self) {
        if let Some(netns) = &self.netns {
            netns.restore();
        }
        self.set(Mode::Pass);
    }

    /// Stop listening: new connections are refused; open ones keep working.
    pub fn refuse(&self) {
        self.set(Mode::Refuse);
    }

    /// Delay every chunk of traffic by `latency`.
    #[allow(dead_code)]
    pub fn latency(&self, latency: Duration) {
        *self.shared.latency.lock().expect("latency") = latency;
    }

    /// Close every open connection, both sides.
    pub fn reset_all(&self) {
        for stream in self.shared.open.lock().expect("open").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.reset_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    addr: SocketAddr,
    mut listener: Option<TcpListener>,
    shared: &Arc<Shared>,
    handle: impl Fn(TcpStream),
) {
    while !shared.stop.load(Ordering::Acquire) {
        let mode = *shared.mode.lock().expect("mode");
        if mode == Mode::Refuse {
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(active) = listener.as_ref() else {
            listener = TcpListener::bind(addr).ok();
            if let Some(l) = &listener {
                l.set_nonblocking(true).expect("nonblocking");
            }
            continue;
        };
        active.set_nonblocking(true).expect("nonblocking");
        match active.accept() {
            Ok((client, _)) => handle(client),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn connect(client: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(shared.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut open = shared.open.lock().expect("open");
        open.push(client2);
        open.push(server2);
    }
    for (from, to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ] {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        let shared = Arc::clone(shared);
        std::thread::spawn(move || pump(from, to, &shared));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if *shared.mode.lock().expect("mode") == Mode::Discard {
            continue;
        }
        let latency = *shared.latency.lock().expect("latency");
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
