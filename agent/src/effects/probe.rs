//! What preflight asks of the host: who runs node-attach, the OS and architecture, cgroups,
//! the tools and ports the kubelet needs, and the installed kubelet's version. The real probe
//! reads `/etc/os-release`, `/sys/fs/cgroup`, `PATH`, binds port 10250 and runs
//! `kubelet --version`; the double answers from its fields.

use super::{run_command, which};
use crate::model::version::KubeVersion;
use std::path::Path;
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
        which(program)?;
        run_command(program, &["--version"], Duration::from_secs(20)).ok()
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
