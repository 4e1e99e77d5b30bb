//! The two listeners: admission over HTTPS (HTTP/2 and HTTP/1.1 by ALPN) and metrics over
//! plain HTTP, with bounded connections and bodies ([`crate::body`]: a deadline, a minimum
//! rate and a shared byte budget) and a drain on shutdown: not ready at once, still serving
//! while endpoint removal propagates, then stop accepting, finish what is in flight and
//! return (docs/webhook-server.md).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission;
use crate::body::{BodyBudget, BodyError, BodyLimits};
use crate::config::{Config, LoadConfigError, load_config};
use crate::metrics::{self, BodyRefusal, Metrics, Outcome};
use crate::owners::{KubeAccess, OwnerLookup, connect};
use crate::reload::{self, Live, Seen, TlsFiles, Watched};
use crate::self_managed::{self, SelfManaged};
use crate::tls::{self, CertResolver};

/// A client gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client gets this long to send a request's headers. hyper counts the wait on an idle
/// keep-alive connection too, so this is also how long an idle connection stays open; an
/// admission connection must also send its first bytes within it ([`FirstBytesBy`]).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Once the listeners close, in-flight requests get this long to finish (Kubernetes' default
/// termination grace period is 30 s, and the drain before it takes 5 s by default).
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits that keep many or slow clients from exhausting the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request bodies: deadline and byte budget.
    pub body: BodyLimits,
    /// Connections open at once on the admission port; past it, new ones wait in the
    /// listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body: BodyLimits::default(),
            max_connections: 1024,
        }
    }
}

/// What `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Configuration YAML; `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    /// Where the serving certificate comes from.
    pub tls: Tls,
    /// How to reach the API server for the owner lookup.
    pub kube: KubeAccess,
    /// After `shutdown`, how long to keep serving (not ready) before the listeners close.
    pub drain: Duration,
    /// Connection and body limits.
    pub limits: Limits,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Files written by cert-manager or mounted from a Secret, reloaded when they change.
    Files(TlsFiles),
    /// Issued in memory from a CA the webhook keeps in a Secret ([`crate::self_managed`]).
    SelfManaged(SelfManaged),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file given at start is missing or invalid (there is no previous one to keep).
    #[error("cannot start without a valid config")]
    Config(#[from] LoadConfigError),
}

/// State shared by every connection and the reloader.
pub struct Shared {
    /// Config, certificate and metrics, kept current by the reloader.
    live: Arc<Live>,
    registry: Registry,
    owners: OwnerLookup,
    bodies: BodyBudget,
    /// Set when shutdown begins: not ready, and HTTP/1.1 connections are closed after their
    /// current answer so clients reconnect (through the Service) to another replica.
    draining: AtomicBool,
}

impl Shared {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Serves admissions on `listener` (HTTPS) and metrics on `metrics_listener` (plain HTTP) until
/// `shutdown` completes, then drains: `/readyz` answers 503 at once, admissions are still
/// served for `options.drain`, then the listeners close, in-flight requests finish and it
/// returns.
///
/// Tests bind `127.0.0.1:0` and pass their own `shutdown`; `main` passes SIGTERM/SIGINT.
pub async fn run(
    listener: TcpListener,
    metrics_listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut seen = Seen::default();
    let config = match &options.config {
        Some(path) => {
            let (config, bytes) = load_config(path)?;
            seen.config = Some(bytes);
            info!(config = %path.display(), "config loaded");
            config
        }
        None => {
            info!("no config file given: using the built-in defaults and catalog");
            Config::default()
        }
    };
    let stop = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let owners = OwnerLookup::start(&options.kube, stop.clone()).await;
    let live = Arc::new(Live {
        config: ArcSwap::from_pointee(config),
        resolver: Arc::new(CertResolver::default()),
        metrics,
    });
    let shared = Arc::new(Shared {
        live: live.clone(),
        registry,
        owners,
        bodies: BodyBudget::new(options.limits.body),
        draining: AtomicBool::new(false),
    });
    let watched = Watched {
        tls: match &options.tls {
            Tls::Files(files) => Some(files.clone()),
            Tls::SelfManaged(_) => None,
        },
        config: options.config.clone(),
    };
    match &options.tls {
        Tls::Files(files) => {
            reload::check_tls(files, &live, &mut seen);
        }
        Tls::SelfManaged(self_managed) => match connect(&options.kube).await {
            Ok(client) => {
                tokio::spawn(self_managed::follow(
                    client,
                    self_managed.clone(),
                    live.clone(),
                    stop.clone(),
                ));
            }
            Err(why) => {
                warn!(reason = %why, "self-managed TLS needs the Kubernetes API: not ready until the webhook is restarted with access to it");
            }
        },
    }
    let reloader = tokio::spawn(reload::follow(watched, live.clone(), seen, stop.clone()));

    // Logged so that whoever asked for port 0 learns the port the kernel chose.
    let addresses = (listener.local_addr(), metrics_listener.local_addr());
    let acceptor = TlsAcceptor::from(tls::server_config(live.resolver.clone()));
    let graceful = Arc::new(GracefulShutdown::new());
    let admission_loop = accept_loop(
        listener,
        stop_accepting.clone(),
        graceful.clone(),
        Arc::new(Semaphore::new(options.limits.max_connections.max(1))),
        {
            let shared = shared.clone();
            move |tcp| {
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            Some((FirstBytesBy::new(stream, HEADER_TIMEOUT), shared, h2))
                        }
                        Ok(Err(e)) => {
                            debug!(error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            debug!("TLS handshake timed out");
                            None
                        }
                    }
                }
            }
        },
        handle_admission_port,
    );
    let metrics_loop = accept_loop(
        metrics_listener,
        stop_accepting.clone(),
        graceful.clone(),
        Arc::new(Semaphore::new(METRICS_CONNECTIONS)),
        {
            let shared = shared.clone();
            move |tcp| std::future::ready(Some((tcp, shared.clone(), false)))
        },
        handle_metrics_port,
    );
    match addresses {
        (Ok(admission), Ok(metrics)) => info!(%admission, %metrics, "serving"),
        _ => info!("serving"),
    }

    shutdown.await;
    shared.draining.store(true, Ordering::Relaxed);
    info!(
        drain_seconds = options.drain.as_secs_f64(),
        "shutting down: not ready, still serving while the endpoint is removed"
    );
    tokio::time::sleep(options.drain).await;
    info!("drained: no new connections, finishing requests in flight");
    stop_accepting.cancel();
    let _ = tokio::join!(admission_loop, metrics_loop);
    let graceful =
        Arc::try_unwrap(graceful).expect("the accept loops have ended and dropped their handles");
    if tokio::time::timeout(FINISH_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "requests still in flight after {}s; closing them",
            FINISH_TIMEOUT.as_secs()
        );
    }
    stop.cancel();
    let _ = reloader.await;
    info!("stopped");
    Ok(())
}

/// Accepts connections until `stop`, at most `slots` at once, turns each into a stream with
/// `establish` (TLS or not; it also says whether ALPN chose HTTP/2) and serves HTTP/2 or
/// HTTP/1.1 on it with `handler`, under `graceful`.
fn accept_loop<S, E, EF, H, HF>(
    listener: TcpListener,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
    slots: Arc<Semaphore>,
    establish: E,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Fn(tokio::net::TcpStream) -> EF + Send + 'static,
    EF: Future<Output = Option<(S, Arc<Shared>, bool)>> + Send + 'static,
    H: Fn(Arc<Shared>, Request<Incoming>) -> HF + Copy + Send + Sync + 'static,
    HF: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let builders = Arc::new(Builders::new());
    tokio::spawn(async move {
        loop {
            // Past the bound, new connections wait in the kernel's backlog, costing nothing here.
            let slot = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let tcp = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let ready = establish(tcp);
            let watcher = graceful.watcher();
            let builders = builders.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let Some((stream, shared, h2)) = ready.await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let version = req.version();
                        let mut response = handler(shared.clone(), req).await;
                        if shared.is_draining() && version < Version::HTTP_2 {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let builder = if h2 { &builders.h2 } else { &builders.h1 };
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    debug!(error = %e, "connection ended with an error");
                }
            });
        }
    })
}

/// A connection's stream that must yield its first bytes within a deadline, else its reads
/// fail and hyper closes the connection.
///
/// hyper's HTTP/2 server waits for the client's preface with no deadline of its own (its
/// keep-alive pings start only after it), so a client that finished the TLS handshake and
/// then sent nothing would hold one of `--max-connections` for good. Wrapping the decrypted
/// stream, not the socket, counts plaintext that rustls read during the handshake: a client
/// whose preface came with its last handshake flight is served at once.
struct FirstBytesBy<S> {
    stream: S,
    /// Until the first bytes arrive.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstBytesBy<S> {
    fn new(stream: S, within: Duration) -> Self {
        FirstBytesBy {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytesBy<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.deadline = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing after the TLS handshake",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytesBy<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections open at once on the metrics port (Prometheus and the kubelet's probes).
const METRICS_CONNECTIONS: usize = 64;

/// The connection builders: HTTP/2 when ALPN chose it, else HTTP/1.1 only.
///
/// HTTP/2 over TLS is chosen by ALPN (RFC 9113 section 3.2), and kube-apiserver offers it.
/// HTTP/1.1 is served without hyper-util's version detection: detection waits for the first
/// bytes with no deadline (hyper issue #3756), so a client that connected and sent nothing
/// held a connection slot for good; served as HTTP/1.1 from the start, the header timeout
/// runs from the first moment.
struct Builders {
    h2: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        Builders {
            h2: configured().http2_only(),
            h1: configured().http1_only(),
        }
    }
}

/// A connection builder with the webhook's timeouts and limits for both versions.
fn configured() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HEADER_TIMEOUT))
        .max_concurrent_streams(H2_STREAMS);
    builder
}

/// The most an HTTP/1.1 connection buffers from the socket (hyper's default is about 400 KiB):
/// a body is copied out of it as it arrives, so a larger buffer only multiplies the memory a
/// hundred slow connections hold.
const READ_BUFFER: usize = 64 * 1024;

/// Streams in flight on one HTTP/2 connection (kube-apiserver multiplexes its webhook calls
/// over one connection per replica).
const H2_STREAMS: u32 = 256;

/// Routes of the HTTPS port.
async fn handle_admission_port(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(&shared, req).await,
        (_, "/mutate") => method_not_allowed("POST"),
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(&shared),
        (_, "/healthz" | "/readyz") => method_not_allowed("GET, HEAD"),
        (_, path) => not_found(path),
    }
}

/// Routes of the plain-HTTP metrics port; the probes are served here too so a kubelet probe
/// needs no TLS.
async fn handle_metrics_port(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut response =
                Response::new(Full::new(Bytes::from(metrics::encode(&shared.registry))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(&shared),
        (_, "/metrics" | "/healthz" | "/readyz") => method_not_allowed("GET, HEAD"),
        (_, path) => not_found(path),
    }
}

/// `POST /mutate`: read the body under [`BodyLimits`] and the config's minimum rate, answer
/// the review, count it.
async fn mutate(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let http1 = req.version() < Version::HTTP_2;
    let min_rate = shared.live.config.load().body_min_rate;
    match shared.bodies.read(req.into_body(), min_rate).await {
        Ok(body) => {
            let config = shared.live.config.load();
            // The review's future holds the decoded pod (about 7 KiB): boxed, it stays put
            // while the request's future moves (into the task of each HTTP/2 stream, say).
            let answer = Box::pin(admission::review(&body.bytes, &config, &shared.owners)).await;
            drop(body);
            shared
                .live
                .metrics
                .observe_admission(answer.outcome, started.elapsed().as_secs_f64());
            json(answer.status, answer.body)
        }
        Err(e) => {
            let (status, reason, refusal) = match e {
                BodyError::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    BodyRefusal::TooLarge,
                ),
                BodyError::Unreadable => (
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    BodyRefusal::Unreadable,
                ),
                BodyError::TimedOut(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    BodyRefusal::TimedOut,
                ),
                BodyError::TooSlow(_) => {
                    (StatusCode::REQUEST_TIMEOUT, "Timeout", BodyRefusal::TooSlow)
                }
                BodyError::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    BodyRefusal::Busy,
                ),
            };
            let metrics = &shared.live.metrics;
            metrics.observe_refused_body(refusal);
            metrics.observe_admission(Outcome::Error, started.elapsed().as_secs_f64());
            debug!(error = %e, "request body not read");
            let mut response = json(
                status,
                admission::status_body(status, reason, &e.to_string()),
            );
            // The rest of a body not read to its end would be taken for the next request.
            if http1
                && matches!(
                    e,
                    BodyError::TooLarge | BodyError::TimedOut(_) | BodyError::TooSlow(_)
                )
            {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if e == BodyError::Busy {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if shared.live.resolver.is_loaded() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate loaded yet\n",
        )
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = json(
        StatusCode::METHOD_NOT_ALLOWED,
        admission::status_body(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("this path accepts {allow}"),
        ),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        admission::status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no such path: {path} (admission reviews go to POST /mutate)"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_has_its_read_fail_at_the_deadline() {
        let (_client, server) = duplex(1024);
        let mut stream = FirstBytesBy::new(server, HEADER_TIMEOUT);
        let started = tokio::time::Instant::now();
        let mut buffer = [0u8; 16];
        let error = stream
            .read(&mut buffer)
            .await
            .expect_err("nothing was sent");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), HEADER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn once_bytes_arrived_a_silent_client_is_left_to_the_http_timeouts() {
        let (mut client, server) = duplex(1024);
        let mut stream = FirstBytesBy::new(server, HEADER_TIMEOUT);
        client.write_all(b"PRI * HTTP/2.0").await.expect("write");
        let mut buffer = [0u8; 64];
        let n = stream.read(&mut buffer).await.expect("the preface is read");
        assert_eq!(&buffer[..n], b"PRI * HTTP/2.0");
        let later = tokio::spawn(async move {
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
            client.write_all(b"SM").await.expect("write");
            client
        });
        let n = stream
            .read(&mut buffer)
            .await
            .expect("no deadline once bytes came");
        assert_eq!(&buffer[..n], b"SM");
        drop(later.await.expect("writer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_hangs_up_at_once_reads_as_the_end_not_a_timeout() {
        let (client, server) = duplex(1024);
        let mut stream = FirstBytesBy::new(server, HEADER_TIMEOUT);
        drop(client);
        let mut buffer = [0u8; 16];
        assert_eq!(stream.read(&mut buffer).await.expect("end of stream"), 0);
    }
}
