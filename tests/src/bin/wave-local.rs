//! Runs a small wave test on this machine, with no cluster and no cloud: the example
//! Deployment goes through `wave-webhook inject`, then `--machines` pods of it are run the
//! way the kubelet would run them (init container `wave-install`, then the wrapped
//! container), with `file://` stores for the script and the results. Their agents play a
//! local stand-in game backend and report over StatsD; a one-line progress display follows
//! the supervisors' metrics, and `wave report` prints the test's report at the end.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use wave_tests::kubelet::{LocalPod, PodIdentity, pod_from_template};
use wave_tests::process::metrics_address;
use wave_tests::target::Target;

#[derive(Parser)]
#[command(about = "Run a small wave test locally, on file:// stores")]
struct Args {
    /// The wave test to run (a Deployment labelled testId).
    #[arg(long, default_value = "manifests/examples/loadtest-linux.yaml")]
    manifest: PathBuf,
    /// The test script bundle (a folder with an executable `run`).
    #[arg(long, default_value = "examples/game-client")]
    script: PathBuf,
    /// Test machines (pods of the Deployment) to run.
    #[arg(long, default_value_t = 3)]
    machines: u32,
    /// Where the stores, the pod's volumes and the injected manifest go.
    #[arg(long, default_value = "wave-local")]
    dir: PathBuf,
    /// How long each example agent plays.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Port of the first supervisor's /metrics while the test runs (machine i gets base +
    /// i); 0 lets each pick a free one.
    #[arg(long, default_value_t = 9102)]
    metrics_port: u16,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("wave-local lives in the target folder")?
        .to_path_buf();
    let dir = std::path::absolute(&args.dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    println!("==> wave-webhook inject -f {}", args.manifest.display());
    let output = Command::new(bin_dir.join("wave-webhook"))
        .args(["inject", "-f"])
        .arg(&args.manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running wave-webhook inject")?;
    ensure!(
        output.status.success(),
        "wave-webhook inject denied the manifest"
    );
    let injected_path = dir.join("injected.yaml");
    std::fs::write(&injected_path, &output.stdout)?;
    let deployment: Deployment =
        serde_saphyr::from_slice(&output.stdout).context("reading the injected Deployment")?;
    let template = &deployment
        .spec
        .as_ref()
        .context("Deployment has no spec")?
        .template;
    let name = deployment
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "wave".into());
    let namespace = deployment
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    println!(
        "    the mutated Deployment is in {}",
        injected_path.display()
    );

    let store = dir.join("store");
    let target = Target::start().context("starting the stand-in game backend")?;
    println!("==> stand-in game backend on {}", target.url());
    let mut pods = Vec::new();
    let mut test_id = String::new();
    let mut results_store = PathBuf::new();
    for machine in 0..args.machines {
        let pod_name = format!("{name}-local-{machine}");
        let pod = pod_from_template(template, &pod_name, &namespace);
        let root = dir.join("pods").join(&pod_name);
        let local = LocalPod {
            pod: &pod,
            identity: PodIdentity {
                name: pod_name.clone(),
                namespace: namespace.clone(),
                uid: format!("00000000-0000-4000-8000-{machine:012}"),
                node_name: "localhost".into(),
            },
            volumes_root: root.join("volumes"),
            image_path: vec![bin_dir.clone()],
        };
        local.create_volumes()?;
        let mut containers = local.containers()?;
        let container = containers.first_mut().context("the pod has no container")?;
        if machine == 0 {
            test_id = container
                .env_value("TEST_ID")
                .context("the webhook set no TEST_ID")?
                .to_string();
            for key in [
                "TEST_ID",
                "TOTAL_PLAYERS",
                "PLAYERS_PER_AGENT",
                "WAVE_AGENTS",
                "WAVE_MACHINE_TYPE",
            ] {
                println!("    {key}={}", container.env_value(key).unwrap_or("-"));
            }
            let script_store = store.join("scripts").join(&test_id);
            copy_dir(&args.script, &script_store)?;
            results_store = store.join("results").join(&test_id);
            std::fs::create_dir_all(&results_store)?;
        }
        for init in local.init_containers()? {
            let status = init
                .command()
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("running {}", init.program.display()))?;
            ensure!(
                status.success(),
                "init container {} of {pod_name} failed: {status}",
                init.container
            );
        }
        let work_dir = root.join("volumes").join("wave-work");
        let script_store = store.join("scripts").join(&test_id);
        container.set_env(
            "WAVE_SCRIPT_URL",
            format!("file://{}/", script_store.display()),
        );
        container.set_env(
            "WAVE_RESULTS_URL",
            format!("file://{}/", results_store.display()),
        );
        container.set_env("WAVE_WORK_DIR", work_dir.display().to_string());
        let port = if args.metrics_port == 0 {
            0
        } else {
            args.metrics_port + machine as u16
        };
        container.set_env("WAVE_METRICS_PORT", port.to_string());
        // All pods share this machine's network: each supervisor takes a free StatsD port
        // and tells its agents.
        container.set_env("WAVE_STATSD_PORT", "0");
        container.set_env(
            "WAVE_COORDINATION",
            format!("file://{}/slots/", dir.display()),
        );
        container.set_env("WAVE_MACHINES", args.machines.to_string());
        container.set_env("WAVE_UPLOAD_INTERVAL", "2s");
        container.set_env("WAVE_EXIT_ON_COMPLETE", "true");
        container.set_env("WAVE_EXAMPLE_SECONDS", args.seconds.to_string());
        container.set_env("WAVE_TARGET_URL", target.url());
        let log_path = root.join("supervisor.log");
        let log = std::fs::File::create(&log_path)?;
        let child = container
            .command()
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running the container's command")?;
        if machine == 0 {
            println!(
                "==> {} machines: {} {}",
                args.machines,
                container.program.display(),
                container.args.join(" ")
            );
        }
        pods.push(RunningPod {
            name: pod_name,
            child,
            log: log_path,
            status: None,
        });
    }
    println!(
        "    supervisor logs: {}/pods/<pod>/supervisor.log",
        dir.display()
    );

    let mut progress = Progress::default();
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    while pods.iter_mut().any(|p| p.running()) {
        std::thread::sleep(Duration::from_millis(500));
        let line = progress.line(&pods, started.elapsed());
        if terminal {
            print!("\r\x1b[2K{line}");
            std::io::stdout().flush()?;
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            println!("{line}");
            last_line = Instant::now();
        }
    }
    if terminal {
        println!();
    }
    let failed: Vec<&RunningPod> = pods
        .iter()
        .filter(|p| p.status.is_some_and(|s| !s.success()))
        .collect();

    println!("==> results in {}", results_store.display());
    let mut files = Vec::new();
    list_files(&results_store, &mut files)?;
    let mut folders: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&results_store).unwrap_or(file);
        let folder = relative.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        folders.entry(folder).or_default().push(name);
    }
    for (folder, names) in folders.iter().filter(|(f, _)| f.components().count() == 2) {
        println!("    {}/  {}", folder.display(), names.join("  "));
    }

    let html = dir.join("report.html");
    println!("==> wave report file://{}/", results_store.display());
    let report = Command::new(bin_dir.join("wave"))
        .arg("report")
        .arg(format!("file://{}/", results_store.display()))
        .arg("--html")
        .arg(&html)
        .arg("--json")
        .arg(dir.join("report.json"))
        .status()
        .context("running wave report")?;
    println!("    HTML report: {}", html.display());
    if let Some(pod) = failed.first() {
        bail!(
            "the supervisor of {} exited with {:?}: see {}",
            pod.name,
            pod.status,
            pod.log.display()
        );
    }
    ensure!(
        report.code().is_some_and(|c| c <= 1),
        "wave report failed: {report}"
    );
    Ok(())
}

/// One pod's supervisor process.
struct RunningPod {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<std::process::ExitStatus>,
}

impl RunningPod {
    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_none()
    }

    /// The supervisor's /metrics text, once its log names the port.
    fn metrics(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let port = metrics_address(&log)?.port();
        Some(wave_tests::http_get(port, "/metrics")?.body)
    }
}

/// When, requests, errors and latency buckets at the last sample.
type Sample = (Instant, f64, f64, Vec<(f64, f64)>);

/// The live display: sums of the supervisors' metrics, rates from the last sample.
#[derive(Default)]
struct Progress {
    last: Option<Sample>,
    line: String,
}

/// Sum of every series of `name` (a prefix up to `{` or ` `) whose labels contain `with`.
fn sum_of(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(with)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Cumulative latency buckets (upper bound in seconds, count), summed over supervisors.
fn buckets(texts: &[String]) -> Vec<(f64, f64)> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for text in texts {
        for line in text
            .lines()
            .filter(|l| l.starts_with("wave_load_latency_ms_bucket{"))
        {
            let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *sums.entry(le.to_owned()).or_default() += value;
        }
    }
    let mut out: Vec<(f64, f64)> = sums
        .into_iter()
        .map(|(le, v)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                },
                v,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// p95 in ms from the increase of cumulative buckets, interpolated as histogram_quantile does.
fn p95_ms(now: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, v)| {
            (
                le,
                v - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = 0.95 * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let share = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some((lower.0 + (le - lower.0) * share) * 1000.0);
        }
        lower = (le, count);
    }
    None
}

impl Progress {
    fn line(&mut self, pods: &[RunningPod], elapsed: Duration) -> String {
        let texts: Vec<String> = pods.iter().filter_map(RunningPod::metrics).collect();
        if texts.is_empty() {
            let exited = pods.iter().filter(|p| p.status.is_some()).count();
            if exited > 0 {
                return format!(
                    "[{:>3}s] {exited} of {} machines finished",
                    elapsed.as_secs(),
                    pods.len()
                );
            }
            return format!(
                "[{:>3}s] starting {} machines…",
                elapsed.as_secs(),
                pods.len()
            );
        }
        let total =
            |name: &str, with: &str| texts.iter().map(|t| sum_of(t, name, with)).sum::<f64>();
        let running = total("wave_agents", "state=\"running\"");
        // A gauge summed from `+n`/`-n` deltas can read -0.
        let players = total("wave_load_players", "") as i64;
        let requests = total("wave_load_requests_total", "");
        let errors = total("wave_load_errors_total", "");
        let latency = buckets(&texts);
        let now = Instant::now();
        if let Some((at, last_requests, last_errors, last_buckets)) = &self.last {
            let seconds = now.duration_since(*at).as_secs_f64();
            if seconds >= 1.0 {
                let p95 =
                    p95_ms(&latency, last_buckets).map_or("-".to_owned(), |p| format!("{p:.0} ms"));
                self.line = format!(
                    "[{:>3}s] machines {}/{} · agents running {running} · players {players} · {:.0} req/s · errors {:.1}/s · p95 {p95}",
                    elapsed.as_secs(),
                    texts.len(),
                    pods.len(),
                    (requests - last_requests) / seconds,
                    (errors - last_errors) / seconds,
                );
                self.last = Some((now, requests, errors, latency));
            }
        } else {
            self.last = Some((now, requests, errors, latency));
        }
        if self.line.is_empty() {
            format!(
                "[{:>3}s] machines {}/{} · agents running {running}",
                elapsed.as_secs(),
                texts.len(),
                pods.len()
            )
        } else {
            self.line.clone()
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        if entry.file_type()?.is_dir() {
            list_files(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}
