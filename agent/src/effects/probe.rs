//! What preflight asks of the host: who runs node-attach, the OS and architecture, cgroups,
//! the tools and ports the kubelet needs, and the installed kubelet's version. The real probe
//! reads `/etc/os-release`, `/sys/fs/cgroup`, `PATH`, binds port 10250 and runs
//! `kubelet --version`; the double answers from its fields.

use super::{run_command, which};
use crate::model::version::KubeVersion;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Host facts preflight checks.
pub trait Probe: Send + Sync {
    /// Whether node-attach runs as root.
    fn is_root(&self) -> bool;
    /// `/etc/os-release`'s PRETTY_NAME (None: no os-release).
    fn os_name(&self) -> Option<String>;
    /// The cgroup version mounted (2, 1), None when there are none.
    fn cgroup_version(&self) -> Option<u8>;
    /// Whether a program is on the PATH (or the usual system directories).
    fn has_program(&self, name: &str) -> bool;
    /// Whether a TCP port is free to listen on.
    fn port_free(&self, port: u16) -> bool;
    /// What `PROGRAM --version` prints, if the program is installed and answers.
    fn version_of(&self, program: &str) -> Option<String>;

    /// The installed kubelet's version, if one answers `kubelet --version`.
    fn kubelet_version(&self) -> Option<KubeVersion> {
        let out = self.version_of("kubelet")?;
        out.split_whitespace()
            .find_map(|w| w.parse::<KubeVersion>().ok())
    }
}

/// The machine node-attach runs on.
pub struct HostProbe;

impl Probe for HostProbe {
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn os_name(&self) -> Option<String> {
        let os = std::fs::read_to_string("/etc/os-release").ok()?;
        let name = os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("unknown")
            .trim_matches('"')
            .to_owned();
        Some(name)
    }

    fn cgroup_version(&self) -> Option<u8> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Some(2)
        } else if Path::new("/sys/fs/cgroup/memory").exists() {
            Some(1)
        } else {
            None
        }
    }

    fn has_program(&self, name: &str) -> bool {
        which(name).is_some()
    }

    fn port_free(&self, port: u16) -> bool {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }

    fn version_of(&self, program: &str) -> Option<String> {
        version_at(&which(program)?)
    }
}

/// What the program at `path` answers to `--version`, asked once per binary.
fn version_at(path: &Path) -> Option<String> {
    let binary = BinaryId::of(path)?;
    let mut answers = ANSWERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, answer)) = answers.iter().find(|(id, _)| *id == binary) {
        return Some(answer.clone());
    }
    let answer = run_command(path.to_str()?, &["--version"], Duration::from_secs(20)).ok()?;
    answers.push((binary, answer.clone()));
    Some(answer)
}

/// `PROGRAM --version` answers already given in this run, by the binary that gave them: a join
/// asks for containerd's while it validates and again in its runtime phase, and a package
/// installed in between replaces the file (a new inode and mtime), which asks again.
static ANSWERS: Mutex<Vec<(BinaryId, String)>> = Mutex::new(Vec::new());

/// Which file a program is: its path, device, inode, size and modification time.
#[derive(Debug, PartialEq, Eq)]
struct BinaryId {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl BinaryId {
    fn of(path: &Path) -> Option<BinaryId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(BinaryId {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// A host described by its fields.
#[derive(Clone, Debug)]
pub struct FixedProbe {
    /// Root or not.
    pub root: bool,
    /// The OS's name.
    pub os: Option<String>,
    /// The cgroup version.
    pub cgroups: Option<u8>,
    /// Programs on the PATH.
    pub programs: Vec<String>,
    /// Ports in use.
    pub busy_ports: Vec<u16>,
    /// What `PROGRAM --version` prints, by program.
    pub versions: Vec<(String, String)>,
}

impl Default for FixedProbe {
    /// A healthy node: root, Debian, cgroup v2, every tool, port 10250 free, no versions known.
    fn default() -> Self {
        FixedProbe {
            root: true,
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            cgroups: Some(2),
            programs: ["ip", "iptables", "mount", "nsenter", "kubelet"]
                .map(String::from)
                .to_vec(),
            busy_ports: Vec::new(),
            versions: Vec::new(),
        }
    }
}

impl Probe for FixedProbe {
    fn is_root(&self) -> bool {
        self.root
    }
    fn os_name(&self) -> Option<String> {
        self.os.clone()
    }
    fn cgroup_version(&self) -> Option<u8> {
        self.cgroups
    }
    fn has_program(&self, name: &str) -> bool {
        self.programs.iter().any(|p| p == name)
    }
    fn port_free(&self, port: u16) -> bool {
        !self.busy_ports.contains(&port)
    }
    fn version_of(&self, program: &str) -> Option<String> {
        let found = self.versions.iter().find(|(p, _)| p == program);
        found.map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_asked_its_version_once_until_it_is_replaced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let program = tmp.path().join("runtime");
        let count = tmp.path().join("asked");
        let install = |version: &str| {
            let staged = tmp.path().join("staged");
            let script = format!(
                "#!/bin/sh\necho x >> '{}'\necho 'runtime {version}'\n",
                count.display()
            );
            std::fs::write(&staged, script).expect("script");
            std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            // As a package manager does: a new file renamed over the old one.
            std::fs::rename(&staged, &program).expect("install");
        };
        let asked = || std::fs::read_to_string(&count).map_or(0, |s| s.lines().count());
        // A command another test thread forks while the script is open for writing may hold
        // it open a moment longer, and exec then fails (ETXTBSY) without running it: asked
        // again. A failure is never remembered.
        let version = || {
            (0..20)
                .find_map(|_| {
                    version_at(&program).or_else(|| {
                        std::thread::sleep(Duration::from_millis(10));
                        None
                    })
                })
                .expect("an answer")
        };
        install("1.6.20");
        assert_eq!(version(), "runtime 1.6.20\n");
        assert_eq!(version(), "runtime 1.6.20\n");
        assert_eq!(asked(), 1);
        install("1.7.24");
        assert_eq!(version(), "runtime 1.7.24\n");
        assert_eq!(asked(), 2);
    }
}
