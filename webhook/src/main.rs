//! `wave-webhook`: argument parsing and wiring only; the server is `wave_webhook::run`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use wave_webhook::body::BodyLimits;
use wave_webhook::config::{self, Config};
use wave_webhook::owners::KubeAccess;
use wave_webhook::reload::TlsFiles;
use wave_webhook::self_managed::{SelfManaged, Timing};
use wave_webhook::{Limits, ServeOptions, Tls, inject};

/// Mutating admission webhook that turns pods labelled `testId` into sized wave test machines.
#[derive(Debug, Parser)]
#[command(name = "wave-webhook", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve AdmissionReviews on POST /mutate over HTTPS, and metrics over plain HTTP.
    Serve(Box<ServeArgs>),
    /// Print manifests (Pod, Deployment, ReplicaSet, StatefulSet, Job) as the webhook would
    /// admit them.
    Inject(InjectArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration YAML, reloaded when it changes; without it the built-in defaults apply.
    #[arg(long, env = "WAVE_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
    /// Serving certificate chain (PEM), reloaded when it changes.
    #[arg(
        long,
        env = "WAVE_WEBHOOK_TLS_CERT",
        required_unless_present = "tls_self_managed",
        requires = "tls_key",
        conflicts_with = "tls_self_managed"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM), reloaded when it changes.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    self_managed: SelfManagedArgs,
    /// Address of the HTTPS admission listener (port 0: the kernel picks one, and the
    /// `serving` log line names it, as it does for the metrics listener).
    #[arg(long, env = "WAVE_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address of the plain-HTTP metrics listener (also serves /healthz and /readyz).
    #[arg(
        long,
        env = "WAVE_WEBHOOK_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// Kubeconfig for the owner lookup; without it the in-cluster service account is used,
    /// else KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "WAVE_WEBHOOK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// After SIGTERM, how long to keep serving (with /readyz answering 503) before the
    /// listeners close, so that endpoint removal reaches every API server first.
    #[arg(long, env = "WAVE_WEBHOOK_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// A request body must arrive whole within this long, else 408.
    #[arg(long, env = "WAVE_WEBHOOK_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Bytes that the request bodies in flight may hold together (past it, new requests wait
    /// briefly, then get 503).
    #[arg(long, env = "WAVE_WEBHOOK_BODY_BUDGET", default_value_t = 64 * 1024 * 1024)]
    body_budget: usize,
    /// Connections open at once on the admission port (past it, new ones wait in the backlog).
    #[arg(long, env = "WAVE_WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
}

/// TLS without cert-manager: the webhook keeps a CA in a Secret and issues its own serving
/// certificates (docs/webhook-server.md, "Self-managed TLS").
#[derive(Debug, Args)]
struct SelfManagedArgs {
    /// Issue the serving certificate from a CA kept in a Secret, and keep the
    /// MutatingWebhookConfiguration's caBundle current, instead of reading --tls-cert/--tls-key.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_SELF_MANAGED")]
    tls_self_managed: bool,
    /// The CA Secret, in the webhook's namespace.
    #[arg(
        long,
        env = "WAVE_WEBHOOK_TLS_CA_SECRET",
        default_value = "wave-webhook-ca"
    )]
    tls_ca_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the webhook keeps current.
    #[arg(
        long,
        env = "WAVE_WEBHOOK_TLS_WEBHOOK_CONFIGURATION",
        default_value = "wave-webhook"
    )]
    tls_webhook_configuration: String,
    /// The Service the API server calls; the serving certificate names
    /// `<service>.<namespace>.svc`.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_SERVICE", default_value = "wave-webhook")]
    tls_service: String,
    /// The webhook's namespace; by default the service account's (in a cluster) or the
    /// kubeconfig context's.
    #[arg(long, env = "WAVE_WEBHOOK_NAMESPACE")]
    namespace: Option<String>,
    /// Validity of a CA; a rotation starts when a third of it is left.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_CA_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    tls_ca_validity: Duration,
    /// Validity of a serving certificate; reissued when a third of it is left.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_CERT_VALIDITY", default_value = "24h", value_parser = humantime::parse_duration)]
    tls_cert_validity: Duration,
    /// How long old and new CA are both in the caBundle, before and after the new one signs.
    #[arg(long, env = "WAVE_WEBHOOK_TLS_ROTATION_OVERLAP", default_value = "1h", value_parser = humantime::parse_duration)]
    tls_rotation_overlap: Duration,
    /// How often the Secret and the caBundle are checked (a caBundle overwritten by someone
    /// else is put back within this).
    #[arg(long, env = "WAVE_WEBHOOK_TLS_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    tls_check_interval: Duration,
}

impl SelfManagedArgs {
    fn into_tls(self, cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Tls> {
        if !self.tls_self_managed {
            return match (cert, key) {
                (Some(cert), Some(key)) => Ok(Tls::Files(TlsFiles { cert, key })),
                _ => anyhow::bail!("--tls-cert and --tls-key are needed unless --tls-self-managed"),
            };
        }
        anyhow::ensure!(
            self.tls_rotation_overlap * 6 < self.tls_ca_validity,
            "--tls-rotation-overlap ({}) must be under a sixth of --tls-ca-validity ({}): a rotation starts with a third of it left and takes two overlaps",
            humantime::format_duration(self.tls_rotation_overlap),
            humantime::format_duration(self.tls_ca_validity)
        );
        anyhow::ensure!(
            self.tls_check_interval < self.tls_rotation_overlap,
            "--tls-check-interval ({}) must be under --tls-rotation-overlap ({}): every replica must see a CA change within the overlap",
            humantime::format_duration(self.tls_check_interval),
            humantime::format_duration(self.tls_rotation_overlap)
        );
        Ok(Tls::SelfManaged(SelfManaged {
            namespace: self.namespace,
            secret: self.tls_ca_secret,
            webhook_configuration: self.tls_webhook_configuration,
            service: self.tls_service,
            timing: Timing {
                ca_validity: self.tls_ca_validity,
                serving_validity: self.tls_cert_validity,
                overlap: self.tls_rotation_overlap,
                check_interval: self.tls_check_interval,
            },
        }))
    }
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// Manifest file to read, `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Configuration YAML, as given to `serve`.
    #[arg(long, env = "WAVE_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Inject(args) => inject(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wave-webhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .init();
    // On one CPU (a CPU limit of 1, `taskset`), one thread does all the work without the
    // cross-thread wakeups of the work-stealing scheduler.
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1)
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let tls = args.self_managed.into_tls(args.tls_cert, args.tls_key)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let metrics_listener = TcpListener::bind(args.metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
        let options = ServeOptions {
            config: args.config,
            tls,
            kube: args
                .kubeconfig
                .map_or(KubeAccess::Infer, KubeAccess::Kubeconfig),
            drain: args.drain,
            limits: Limits {
                body: BodyLimits {
                    timeout: args.body_timeout,
                    budget: args.body_budget,
                    ..BodyLimits::default()
                },
                max_connections: args.max_connections,
            },
        };
        let (first, first_received) = tokio::sync::oneshot::channel();
        tokio::spawn(signals(first));
        wave_webhook::run(listener, metrics_listener, options, async {
            let _ = first_received.await;
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Reports the first SIGTERM or SIGINT on `first` (the server drains); a second one exits the
/// process at once, in-flight requests or not.
async fn signals(first: tokio::sync::oneshot::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; wait on Ctrl-C instead.
        let _ = tokio::signal::ctrl_c().await;
        let _ = first.send(());
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = first.send(());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting at once, without finishing the requests in flight");
    std::process::exit(1);
}

fn inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => config::load_config(path)?.0,
        None => Config::default(),
    };
    let mut input = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read standard input")?;
    } else {
        input = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    match inject::inject_documents(&input, &config) {
        Ok(output) => {
            print!("{output}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
