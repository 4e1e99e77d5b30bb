//! The two listeners: admission over HTTPS and metrics over plain HTTP, with graceful
//! shutdown (stop accepting, finish what is in flight, then return).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{self, MAX_BODY};
use crate::config::{Config, LoadConfigError, load_config};
use crate::metrics::{self, Metrics, Outcome};
use crate::owners::{KubeAccess, OwnerLookup};
use crate::reload::{self, Live, Seen, Watched};
use crate::tls::{self, CertResolver};

/// A client gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client gets this long to send a request's headers. hyper counts the wait on an idle
/// keep-alive connection too, so this is also how long an idle connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// After shutdown begins, in-flight requests get this long to finish (Kubernetes' default
/// termination grace period is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// A too-large body is still read (and dropped) up to this size, so the client can read the
/// 413 instead of having its connection reset mid-upload.
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;

/// What `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Configuration YAML; `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    /// Serving certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
    /// How to reach the API server for the owner lookup.
    pub kube: KubeAccess,
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
}

impl Shared {
    /// Ready once a certificate is loaded (the config always is, or the server did not start).
    fn is_ready(&self) -> bool {
        self.live.resolver.is_loaded()
    }
}

/// Serves admissions on `listener` (HTTPS) and metrics on `metrics_listener` (plain HTTP) until
/// `shutdown` completes, then stops accepting, lets in-flight requests finish and returns.
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
    });
    let watched = Watched {
        tls_cert: options.tls_cert.clone(),
        tls_key: options.tls_key.clone(),
        config: options.config.clone(),
    };
    reload::check_tls(&watched, &live, &mut seen);
    let reloader = tokio::spawn(reload::follow(watched, live.clone(), seen, stop.clone()));

    // Logged so that whoever asked for port 0 learns the port the kernel chose.
    let addresses = (listener.local_addr(), metrics_listener.local_addr());
    let acceptor = TlsAcceptor::from(tls::server_config(live.resolver.clone()));
    let graceful = Arc::new(GracefulShutdown::new());
    let admission_loop = accept_loop(
        listener,
        stop.clone(),
        graceful.clone(),
        {
            let shared = shared.clone();
            move |tcp| {
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => Some((stream, shared)),
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
        stop.clone(),
        graceful.clone(),
        {
            let shared = shared.clone();
            move |tcp| std::future::ready(Some((tcp, shared.clone())))
        },
        handle_metrics_port,
    );
    match addresses {
        (Ok(admission), Ok(metrics)) => info!(%admission, %metrics, "serving"),
        _ => info!("serving"),
    }

    tokio::select! {
        () = shutdown => {}
        () = stop.cancelled() => {}
    }
    info!("shutting down: no new connections, finishing requests in flight");
    stop.cancel();
    let _ = tokio::join!(admission_loop, metrics_loop);
    let graceful =
        Arc::try_unwrap(graceful).expect("the accept loops have ended and dropped their handles");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "requests still in flight after {}s; closing them",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    let _ = reloader.await;
    info!("stopped");
    Ok(())
}

/// Accepts connections until `stop`, turns each into a stream with `establish` (TLS or not) and
/// serves HTTP/1.1 on it with `handler`, under `graceful`.
fn accept_loop<S, E, EF, H, HF>(
    listener: TcpListener,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
    establish: E,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Fn(tokio::net::TcpStream) -> EF + Send + 'static,
    EF: Future<Output = Option<(S, Arc<Shared>)>> + Send + 'static,
    H: Fn(Arc<Shared>, Request<Incoming>) -> HF + Copy + Send + Sync + 'static,
    HF: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
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
            tokio::spawn(async move {
                let Some((stream, shared)) = ready.await else {
                    return;
                };
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handler(shared, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    debug!(error = %e, "connection ended with an error");
                }
            });
        }
    })
}

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

/// `POST /mutate`: read at most [`MAX_BODY`], answer the review, count it.
async fn mutate(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = read_body(req.into_body(), declared).await;
    match body {
        Ok(bytes) => {
            let config = shared.live.config.load();
            let answer = admission::review(&bytes, &config, &shared.owners).await;
            shared
                .live
                .metrics
                .observe_admission(answer.outcome, started.elapsed().as_secs_f64());
            json(answer.status, answer.body)
        }
        Err(e) => {
            shared
                .live
                .metrics
                .observe_admission(Outcome::Error, started.elapsed().as_secs_f64());
            if e == BodyError::TooLarge {
                let mut response = json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    admission::status_body(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        &format!("the request body is larger than {MAX_BODY} bytes"),
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            } else {
                json(
                    StatusCode::BAD_REQUEST,
                    admission::status_body(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the request body could not be read",
                    ),
                )
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the body, keeping at most [`MAX_BODY`] bytes; a larger one is read to its end (up to
/// [`DISCARD_LIMIT`]) and dropped, so the 413 reaches a client that is still sending.
///
/// A body that arrives in one piece (the usual case) is kept without copying.
async fn read_body(mut body: Incoming, declared: Option<usize>) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut kept = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total > DISCARD_LIMIT {
                return Err(BodyError::TooLarge);
            }
            if total > MAX_BODY {
                first = None;
                kept = BytesMut::new();
            } else if first.is_none() && kept.is_empty() {
                first = Some(data);
            } else {
                if let Some(head) = first.take() {
                    kept.reserve(declared.unwrap_or(0).clamp(head.len(), MAX_BODY));
                    kept.extend_from_slice(&head);
                }
                kept.extend_from_slice(&data);
            }
        }
    }
    if total > MAX_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(first.unwrap_or_else(|| kept.freeze()))
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.is_ready() {
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
