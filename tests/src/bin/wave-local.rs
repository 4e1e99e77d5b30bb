//! Runs one wave test machine on this machine, with no cluster and no cloud: the example
//! Deployment goes through `wave-webhook inject`, then its first pod is run the way the
//! kubelet would run it (init container `wave-install`, then the wrapped container), with
//! `file://` stores for the script and the results. Progress streams to the terminal,
//! metrics are served while it runs, results land in a local folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use wave_tests::kubelet::{LocalPod, PodIdentity, pod_from_template};

#[derive(Parser)]
#[command(about = "Run one wave test machine locally, on file:// stores")]
struct Args {
    /// The wave test to run (a Deployment labelled testId).
    #[arg(long, default_value = "manifests/examples/loadtest-linux.yaml")]
    manifest: PathBuf,
    /// The test script bundle (a folder with an executable `run`).
    #[arg(long, default_value = "examples/script")]
    script: PathBuf,
    /// Where the stores, the pod's volumes and the injected manifest go.
    #[arg(long, default_value = "wave-local")]
    dir: PathBuf,
    /// How long each example agent plays.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Port of the supervisor's /metrics while the test runs.
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
    let pod = pod_from_template(template, &format!("{name}-local-0"), &namespace);
    println!(
        "    the mutated Deployment is in {}",
        injected_path.display()
    );

    let local = LocalPod {
        pod: &pod,
        identity: PodIdentity {
            name: format!("{name}-local-0"),
            namespace,
            uid: "00000000-0000-4000-8000-000000000000".into(),
            node_name: "localhost".into(),
        },
        volumes_root: dir.join("volumes"),
        image_path: vec![bin_dir.clone()],
    };
    local.create_volumes()?;
    let mut containers = local.containers()?;
    let container = containers.first_mut().context("the pod has no container")?;
    let test_id = container
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

    let store = dir.join("store");
    let script_store = store.join("scripts").join(&test_id);
    copy_dir(&args.script, &script_store)?;
    let results_store = store.join("results").join(&test_id);
    std::fs::create_dir_all(&results_store)?;

    for init in local.init_containers()? {
        println!(
            "==> init container {}: {} {}",
            init.container,
            init.program.display(),
            init.args.join(" ")
        );
        let status = init
            .command()
            .status()
            .with_context(|| format!("running {}", init.program.display()))?;
        ensure!(
            status.success(),
            "init container {} failed: {status}",
            init.container
        );
    }

    let work_dir = dir.join("volumes").join("wave-work");
    container.set_env(
        "WAVE_SCRIPT_URL",
        format!("file://{}/", script_store.display()),
    );
    container.set_env(
        "WAVE_RESULTS_URL",
        format!("file://{}/", results_store.display()),
    );
    container.set_env("WAVE_WORK_DIR", work_dir.display().to_string());
    container.set_env("WAVE_METRICS_PORT", args.metrics_port.to_string());
    container.set_env("WAVE_UPLOAD_INTERVAL", "2s");
    container.set_env("WAVE_EXIT_ON_COMPLETE", "true");
    container.set_env("WAVE_EXAMPLE_SECONDS", args.seconds.to_string());
    println!(
        "==> container {}: {} {}",
        container.container,
        container.program.display(),
        container.args.join(" ")
    );
    println!(
        "    metrics: http://127.0.0.1:{}/metrics",
        args.metrics_port
    );
    let status = container
        .command()
        .status()
        .context("running the container's command")?;

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
    for (folder, names) in &folders {
        println!("    {}/  {}", folder.display(), names.join("  "));
    }
    if !status.success() {
        bail!(
            "the supervisor exited with {status}: see {}",
            results_store.display()
        );
    }
    Ok(())
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
