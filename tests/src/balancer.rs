//! A tiny TCP load balancer on 127.0.0.1, as kube-proxy is for a Service: each new connection
//! goes to the next backend in turn and bytes are copied both ways. A test removes a backend
//! when it likes, for example seconds after the pod got SIGTERM, the way endpoint removal
//! reaches kube-proxy late; connections already open stay open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The balancer; it stops accepting when dropped.
pub struct Balancer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    backends: Vec<Backend>,
    next: usize,
}

struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Balancer {
    /// Listens on a free port of 127.0.0.1 with no backend (connections are closed at once).
    pub async fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the balancer binds a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let Some(target) = pick(&state) else {
                        continue;
                    };
                    tokio::spawn(async move {
                        if let Ok(mut backend) = TcpStream::connect(target).await {
                            let _ = backend.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                        }
                    });
                }
            }
        });
        Balancer { addr, state, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections may go to `backend` from now on.
    pub fn add(&self, backend: SocketAddr) {
        self.lock().backends.push(Backend {
            addr: backend,
            connections: Arc::new(AtomicUsize::new(0)),
        });
    }

    /// No new connection goes to `backend` from now on.
    pub fn remove(&self, backend: SocketAddr) {
        self.lock().backends.retain(|b| b.addr != backend);
    }

    /// Connections sent to `backend` while it was in the rotation (0 once removed).
    pub fn connections_to(&self, backend: SocketAddr) -> usize {
        self.lock()
            .backends
            .iter()
            .find(|b| b.addr == backend)
            .map_or(0, |b| b.connections.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("balancer lock")
    }
}

fn pick(state: &Mutex<State>) -> Option<SocketAddr> {
    let mut state = state.lock().expect("balancer lock");
    if state.backends.is_empty() {
        return None;
    }
    let index = state.next % state.backends.len();
    state.next = state.next.wrapping_add(1);
    let backend = &state.backends[index];
    backend.connections.fetch_add(1, Ordering::Relaxed);
    Some(backend.addr)
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
