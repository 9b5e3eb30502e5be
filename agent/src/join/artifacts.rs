//! What a plain machine lacks, from the signed mirror (see [`crate::artifacts`]): the
//! `artifacts` phase decides what is missing (the kubelet, crictl, the CNI plugins, a static
//! containerd when the runtime is missing and no package manager is to be used, the image
//! archives for `--air-gap`), checks the manifest's signature, picks the release the skew
//! policy allows and downloads and verifies every file into a scratch directory — all before
//! the first change; the `install` phase then moves each file into place, journaled.
//!
//! Only what is missing is fetched, so a machine prepared by `join --phase prepare` (or an
//! image with its own kubelet) never needs the mirror again.

use crate::apply::install::StagedFile;
use crate::apply::journal::Change;
use crate::apply::{Applier, ApplyError};
use crate::artifacts::fetch::Mirror;
use crate::artifacts::manifest::{self, Arch, Manifest, Release, RuntimeRelease};
use crate::effects::fs::{Existing, Scratch};
use crate::effects::{which, Effects};
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
use crate::sources::settings::{MirrorSettings, Settings};
use crate::sources::values::{RuntimeKind, RuntimeSource};
use std::path::{Path, PathBuf};

/// Where the kubelet is installed.
pub const KUBELET_PATH: &str = "/usr/bin/kubelet";
/// Where crictl is installed.
pub const CRICTL_PATH: &str = "/usr/bin/crictl";
/// Where CNI plugins are installed (the kubelet's and containerd's default).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The CNI plugin every runtime runs for a pod sandbox: its presence means "plugins here".
pub const CNI_PROBE: &str = "loopback";
/// Debian's and Ubuntu's CNI plugin directory (containernetworking-plugins).
pub const DISTRO_CNI_DIR: &str = "/usr/lib/cni";
/// The unit of a static containerd.
pub const CONTAINERD_UNIT_PATH: &str = "/etc/systemd/system/containerd.service";
/// Its text.
pub const CONTAINERD_UNIT: &str = include_str!("../../../systemd/containerd.service");

/// What this machine lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// No kubelet.
    pub kubelet: bool,
    /// No crictl.
    pub crictl: bool,
    /// No CNI plugins.
    pub cni: bool,
    /// No container runtime, and it is to come from the mirror.
    pub runtime: bool,
    /// The mirror's image archives are wanted (`--air-gap`) and were never imported here.
    pub images: bool,
}

impl Needs {
    /// Whether the mirror is needed: crictl, optional, comes along but never alone.
    fn any(&self) -> bool {
        self.kubelet || self.cni || self.runtime || self.images
    }
}

/// An image archive waiting to be imported.
#[derive(Clone, Debug)]
pub struct StagedImages {
    /// What it is, for the plan.
    pub what: String,
    /// Its real path (None in a dry run).
    pub archive: Option<PathBuf>,
    /// The references it must yield (empty for a local archive: whatever it holds).
    pub refs: Vec<String>,
}

/// Verified downloads, waiting for the install phase.
#[derive(Debug, Default)]
pub struct Staged {
    /// Kept alive until the files are installed; removed (with anything left) on drop.
    scratch: Option<Scratch>,
    /// Files to install.
    pub files: Vec<StagedFile>,
    /// Image archives to import once the runtime runs.
    pub images: Vec<StagedImages>,
    /// The kubelet version installed from the mirror.
    pub kubelet_version: Option<KubeVersion>,
    /// The static containerd's version, when one is installed.
    pub static_runtime: Option<String>,
    /// What the phase did, for the report.
    pub summary: String,
}

impl Staged {
    /// Whether the install phase has anything to do.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.images.is_empty()
    }
}

fn present(effects: &Effects, path: &str) -> bool {
    !matches!(effects.root.inspect(Path::new(path)), Ok(Existing::Absent))
}

fn installed(effects: &Effects, program: &str, paths: &[&str]) -> bool {
    paths.iter().any(|p| present(effects, p)) || (effects.host && which(program).is_some())
}

/// Whether the runtime's binary is on the machine (however it came).
pub fn runtime_binary_present(effects: &Effects, kind: RuntimeKind) -> bool {
    let program = match kind {
        RuntimeKind::Containerd => "containerd",
        RuntimeKind::Docker => "dockerd",
    };
    installed(
        effects,
        program,
        &[
            &format!("/usr/bin/{program}"),
            &format!("/usr/local/bin/{program}"),
        ],
    )
}

/// Whether the runtime is on the machine (its binary, or its package).
pub fn runtime_present(effects: &Effects, kind: RuntimeKind) -> bool {
    let package = match kind {
        RuntimeKind::Containerd => "containerd",
        RuntimeKind::Docker => "docker.io",
    };
    runtime_binary_present(effects, kind)
        || (effects.host
            && effects
                .packages
                .as_ref()
                .is_some_and(|pm| pm.installed_version(package).is_some()))
}

/// What is missing, given the settings.
pub fn needs(settings: &Settings, effects: &Effects, journal_images: bool) -> Needs {
    let a = &settings.artifacts;
    let cni_dirs = [
        format!("{CNI_BIN_DIR}/{CNI_PROBE}"),
        format!("{DISTRO_CNI_DIR}/{CNI_PROBE}"),
    ];
    let runtime_missing = !runtime_present(effects, settings.runtime);
    Needs {
        kubelet: !installed(
            effects,
            "kubelet",
            &[KUBELET_PATH, "/usr/local/bin/kubelet"],
        ),
        crictl: !installed(effects, "crictl", &[CRICTL_PATH, "/usr/local/bin/crictl"]),
        cni: !cni_dirs.iter().any(|p| present(effects, p)),
        runtime: runtime_missing
            && settings.runtime == RuntimeKind::Containerd
            && match a.runtime_source {
                RuntimeSource::Mirror => true,
                RuntimeSource::Package => false,
                RuntimeSource::Auto => effects.packages.is_none(),
            },
        images: a.air_gap && !journal_images,
    }
}

fn failure(e: &crate::artifacts::ArtifactError) -> Failure {
    Failure::from_error(e)
}

/// The files to fetch for `needs` from `release` (and `runtime`).
fn wanted_files(
    needs: &Needs,
    release: &Release,
    runtime: Option<&RuntimeRelease>,
) -> Vec<(StagedFile, manifest::FileRef)> {
    let mut out = Vec::new();
    let mut add = |what: String, target: String, f: &manifest::FileRef| {
        out.push((
            StagedFile {
                what,
                target: PathBuf::from(target),
                mode: 0o755,
                sha256: f.sha256.clone(),
                staged: None,
            },
            f.clone(),
        ));
    };
    let v = release.version();
    if needs.kubelet {
        add(
            format!("kubelet {v}"),
            KUBELET_PATH.into(),
            &release.kubelet,
        );
    }
    if let (true, Some(c)) = (needs.crictl, &release.crictl) {
        add(format!("crictl ({v})"), CRICTL_PATH.into(), c);
    }
    if needs.cni {
        for (name, f) in &release.cni_plugins {
            add(
                format!("CNI plugin {name}"),
                format!("{CNI_BIN_DIR}/{name}"),
                f,
            );
        }
    }
    if let Some(rt) = runtime {
        for (name, f) in &rt.binaries {
            let target = manifest::RUNTIME_BINARIES
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| unreachable!("validated: {name}"));
            add(
                format!("containerd {} {name}", rt.version),
                target.into(),
                f,
            );
        }
    }
    out
}

/// The static containerd offered for this architecture (the version asked for, if any).
fn pick_runtime<'m>(
    m: &'m Manifest,
    arch: Arch,
    version: Option<&str>,
) -> Result<&'m RuntimeRelease, Failure> {
    m.runtimes
        .iter()
        .filter(|r| r.arch == arch && version.is_none_or(|v| r.version == v))
        .max_by(|a, b| a.version.cmp(&b.version))
        .ok_or_else(|| {
            Failure::new(
                Code::ArtifactsManifest,
                format!(
                    "containerd is missing and is to come from the mirror, which offers no static containerd{} for {}",
                    version.map(|v| format!(" {v}")).unwrap_or_default(),
                    arch.as_str()
                ),
            )
        })
}

/// The `artifacts` phase: everything that can be refused is refused here, before the first
/// change. `server` is None in bake mode (no cluster to check the skew against).
pub async fn stage(
    settings: &Settings,
    effects: &Effects,
    server: Option<&KubeVersion>,
    journal_images: bool,
) -> Result<Staged, Failure> {
    let mut staged = local_archives(settings);
    let Some(mirror_settings) = &settings.artifacts.mirror else {
        return Ok(staged);
    };
    let needs = needs(settings, effects, journal_images);
    if !needs.any() {
        staged.summary = "nothing missing: the mirror is not needed".into();
        return Ok(staged);
    }
    let arch = Arch::this().ok_or_else(|| {
        Failure::new(
            Code::ArtifactsManifest,
            format!(
                "no Kubernetes artifacts exist for {}",
                std::env::consts::ARCH
            ),
        )
    })?;
    let mirror = mirror_of(settings, mirror_settings)?;
    let m = mirror
        .manifest(&mirror_settings.key)
        .await
        .map_err(|e| failure(&e))?;
    let release = manifest::select(
        &m,
        arch,
        server,
        settings.artifacts.kubelet_version.as_ref(),
    )
    .map_err(|e| failure(&crate::artifacts::ArtifactError::Select(e)))?;
    let runtime = if needs.runtime {
        Some(pick_runtime(
            &m,
            arch,
            settings.runtime_values.version.as_deref(),
        )?)
    } else {
        None
    };
    let mut files = wanted_files(&needs, release, runtime);
    let images: Vec<&manifest::ImageArchive> = if needs.images {
        release.images.iter().collect()
    } else {
        Vec::new()
    };
    if needs.kubelet {
        staged.kubelet_version = Some(release.version());
    }
    staged.static_runtime = runtime.map(|r| r.version.clone());
    download_all(settings, effects, &mirror, &mut files, &images, &mut staged).await?;
    staged.summary = format!(
        "kubelet {} from {} (signature verified): {} file(s){}{}",
        release.version(),
        mirror_settings.url,
        files.len(),
        if staged.images.is_empty() {
            String::new()
        } else {
            format!(", {} image archive(s)", staged.images.len())
        },
        if settings.dry_run {
            " to download"
        } else {
            " downloaded and verified"
        }
    );
    staged.files = files.into_iter().map(|(f, _)| f).collect();
    Ok(staged)
}

/// Downloads and verifies every wanted file and image archive into a fresh scratch directory
/// (a dry run only lists the images).
async fn download_all(
    settings: &Settings,
    effects: &Effects,
    mirror: &Mirror,
    files: &mut [(StagedFile, manifest::FileRef)],
    images: &[&manifest::ImageArchive],
    staged: &mut Staged,
) -> Result<(), Failure> {
    if settings.dry_run || (files.is_empty() && images.is_empty()) {
        staged.images.extend(images.iter().map(|img| StagedImages {
            what: img.file.path.clone(),
            archive: None,
            refs: img.refs.clone(),
        }));
        return Ok(());
    }
    let _ = effects.root.sweep_scratch();
    let scratch = effects
        .root
        .scratch()
        .map_err(|e| Failure::new(Code::Filesystem, e.to_string()))?;
    for (i, (f, r)) in files.iter_mut().enumerate() {
        let real = mirror
            .download(&f.what, r, &scratch, &format!("file-{i}"))
            .await
            .map_err(|e| failure(&e))?;
        f.staged = Some(real);
    }
    for (i, img) in images.iter().enumerate() {
        let real = mirror
            .download(
                "an image archive",
                &img.file,
                &scratch,
                &format!("image-{i}.tar"),
            )
            .await
            .map_err(|e| failure(&e))?;
        staged.images.push(StagedImages {
            what: img.file.path.clone(),
            archive: Some(real),
            refs: img.refs.clone(),
        });
    }
    staged.scratch = Some(scratch);
    Ok(())
}

fn mirror_of(settings: &Settings, m: &MirrorSettings) -> Result<Mirror, Failure> {
    let mut limits = settings.limits;
    // Manifests are small; files are capped by their signed size instead.
    limits.max_body = limits.max_body.max(1024 * 1024);
    Mirror::new(&m.url, m.ca_file.as_deref(), limits, m.timeout).map_err(|e| failure(&e))
}

/// Local archives named by `--image-archive`.
fn local_archives(settings: &Settings) -> Staged {
    Staged {
        images: settings
            .artifacts
            .image_archives
            .iter()
            .map(|p| StagedImages {
                what: p.display().to_string(),
                archive: Some(p.clone()),
                refs: Vec::new(),
            })
            .collect(),
        ..Staged::default()
    }
}

/// Whether the journal records images imported by an earlier join (bake mode, a rerun).
pub fn journal_has_images(records: &[crate::apply::journal::Record]) -> bool {
    records
        .iter()
        .any(|r| matches!(r.change, Some(Change::ImagesImported { .. })))
}

/// The `install` phase: the staged files into place (and a static containerd's unit).
/// Returns whether a unit file changed.
pub fn install(applier: &mut Applier<'_>, staged: &Staged) -> Result<bool, ApplyError> {
    for f in &staged.files {
        applier.install_file(f)?;
    }
    if staged.static_runtime.is_some() {
        let changed = applier
            .file(
                Path::new(CONTAINERD_UNIT_PATH),
                0o644,
                CONTAINERD_UNIT.as_bytes(),
                false,
            )?
            .changes();
        return Ok(changed);
    }
    Ok(false)
}

/// Imports the staged image archives into the running runtime (before the kubelet starts).
pub fn import(
    applier: &mut Applier<'_>,
    runtime: RuntimeKind,
    staged: &Staged,
) -> Result<(), ApplyError> {
    for img in &staged.images {
        applier.import_images(runtime, img.archive.as_deref(), &img.what, &img.refs)?;
    }
    Ok(())
}

/// Whether containerd should be pointed at [`CNI_BIN_DIR`]: its configured directory
/// (`configured`, default the same) lacks the plugins, and node-attach's has them.
pub fn cni_bin_dir_override(effects: &Effects, configured: Option<&str>) -> Option<&'static str> {
    let dir = configured.unwrap_or(CNI_BIN_DIR);
    let has = |d: &str| present(effects, &format!("{}/{CNI_PROBE}", d.trim_end_matches('/')));
    (dir != CNI_BIN_DIR && !has(dir) && has(CNI_BIN_DIR)).then_some(CNI_BIN_DIR)
}

/// Preflight without the `kubelet` check when a mirror will install a missing kubelet.
pub fn waive_checks(
    checks: Vec<crate::join::preflight::Check>,
    settings: &Settings,
) -> Vec<crate::join::preflight::Check> {
    if settings.artifacts.mirror.is_none() {
        return checks;
    }
    checks.into_iter().filter(|c| c.id != "kubelet").collect()
}
