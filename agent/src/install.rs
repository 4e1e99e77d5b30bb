//! `wave-agent install DIR`: what the `wave-install` init container runs to put the
//! supervisor into the shared `wave-bin` volume.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The executable could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {}", path.display())]
pub struct InstallError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Copies the running executable to `<dir>/wave-agent` (mode 0755), atomically: a reader
/// sees the old file or the complete new one, never a partial copy.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    let err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError { op, path, source }
    };
    let exe =
        std::env::current_exe().map_err(err("locate", Path::new("the running executable")))?;
    fs::create_dir_all(dir).map_err(err("create", dir))?;
    let target = dir.join("wave-agent");
    let tmp = dir.join(format!(".wave-agent.tmp-{}", std::process::id()));
    let result = (|| {
        fs::copy(&exe, &tmp).map_err(err("copy the executable to", &tmp))?;
        fs::set_permissions(&tmp, Permissions::from_mode(0o755))
            .map_err(err("set the mode of", &tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(err("sync", &tmp))?;
        fs::rename(&tmp, &target).map_err(err("move the executable to", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| target)
}
