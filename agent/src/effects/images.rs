//! Container images in the node's runtime, for air-gapped nodes: archives (docker-archive or
//! OCI tar) imported into containerd's `k8s.io` namespace with `ctr`, or into docker with
//! `docker load`, before the kubelet starts; listed to learn what an import added (so the
//! journal records exactly those and reset removes only them).

use super::{run_command, EffectError};
use crate::sources::values::RuntimeKind;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime's images.
pub trait Images: Send + Sync {
    /// The image references the runtime holds (containerd: the `k8s.io` namespace).
    fn list(&self, runtime: RuntimeKind) -> Result<Vec<String>, EffectError>;
    /// Imports an archive (a real path on this machine).
    fn import(&self, runtime: RuntimeKind, archive: &Path) -> Result<(), EffectError>;
    /// Removes an image reference.
    fn remove(&self, runtime: RuntimeKind, reference: &str) -> Result<(), EffectError>;
}

/// The real runtime's tools.
pub struct RuntimeImages;

impl Images for RuntimeImages {
    fn list(&self, runtime: RuntimeKind) -> Result<Vec<String>, EffectError> {
        let out = match runtime {
            RuntimeKind::Containerd => {
                run_command("ctr", &["-n", "k8s.io", "images", "ls", "-q"], LIST_TIMEOUT)?
            }
            RuntimeKind::Docker => run_command(
                "docker",
                &["images", "--format", "{{.Repository}}:{{.Tag}}"],
                LIST_TIMEOUT,
            )?,
        };
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains("<none>"))
            .map(str::to_owned)
            .collect())
    }

    fn import(&self, runtime: RuntimeKind, archive: &Path) -> Result<(), EffectError> {
        let path = archive.to_str().ok_or_else(|| EffectError {
            what: "importing an image archive".into(),
            detail: format!("{} is not a UTF-8 path", archive.display()),
        })?;
        match runtime {
            RuntimeKind::Containerd => run_command(
                "ctr",
                &["-n", "k8s.io", "images", "import", path],
                IMPORT_TIMEOUT,
            ),
            RuntimeKind::Docker => run_command("docker", &["load", "-i", path], IMPORT_TIMEOUT),
        }
        .map(drop)
    }

    fn remove(&self, runtime: RuntimeKind, reference: &str) -> Result<(), EffectError> {
        match runtime {
            RuntimeKind::Containerd => run_command(
                "ctr",
                &["-n", "k8s.io", "images", "rm", reference],
                LIST_TIMEOUT,
            ),
            RuntimeKind::Docker => run_command("docker", &["rmi", reference], LIST_TIMEOUT),
        }
        .map(drop)
    }
}

/// A shared handle works as the effect it holds (a test keeps one to look at a double).
impl<T: Images> Images for std::sync::Arc<T> {
    fn list(&self, runtime: RuntimeKind) -> Result<Vec<String>, EffectError> {
        (**self).list(runtime)
    }
    fn import(&self, runtime: RuntimeKind, archive: &Path) -> Result<(), EffectError> {
        (**self).import(runtime, archive)
    }
    fn remove(&self, runtime: RuntimeKind, reference: &str) -> Result<(), EffectError> {
        (**self).remove(runtime, reference)
    }
}

/// A double: images in memory; an archive's references are the lines of the file.
#[derive(Default)]
pub struct RecordingImages {
    /// The images held.
    pub held: Mutex<Vec<String>>,
    /// Calls in order.
    pub calls: Mutex<Vec<String>>,
}

impl Images for RecordingImages {
    fn list(&self, _runtime: RuntimeKind) -> Result<Vec<String>, EffectError> {
        Ok(self.held.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn import(&self, runtime: RuntimeKind, archive: &Path) -> Result<(), EffectError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("import {runtime:?} {}", archive.display()));
        let text = std::fs::read_to_string(archive).map_err(|e| EffectError {
            what: format!("importing {}", archive.display()),
            detail: e.to_string(),
        })?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for r in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !held.iter().any(|h| h == r) {
                held.push(r.to_owned());
            }
        }
        Ok(())
    }

    fn remove(&self, runtime: RuntimeKind, reference: &str) -> Result<(), EffectError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("remove {runtime:?} {reference}"));
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h| h != reference);
        Ok(())
    }
}
