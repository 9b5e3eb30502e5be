//! Every side effect outside the filesystem sits behind a small trait with a real
//! implementation and a test double: systemd ([`Systemd`]), the OS package manager
//! ([`Packages`]), the container runtime's CRI socket ([`Cri`]) and its images
//! ([`images::Images`]). The filesystem goes through
//! [`fs::Root`]. When the root is not `/`, node-attach touches no host service or package: those
//! steps are journaled as skipped instead.
//!
//! This is the only module that may touch the host directly (`agent/clippy.toml` refuses
//! `std::fs`, `std::process::Command` and mount calls everywhere else).
#![allow(clippy::disallowed_methods)]

pub mod command;
pub mod containers;
pub mod cri;
pub mod fs;
pub mod images;
pub mod input;
pub mod kernel;
pub mod network;
pub mod packages;
pub mod probe;
pub mod seen;

pub use command::{run_command, run_command_env, run_command_input};
pub use packages::{detect_packages, Packages, RecordingPackages};

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failed host operation, with the command and its stderr.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct EffectError {
    /// What was attempted (the command line).
    pub what: String,
    /// Why it failed.
    pub detail: String,
}

/// Finds a program in the usual system directories or PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// systemd, as `systemctl` drives it.
pub trait Systemd: Send + Sync {
    /// `systemctl daemon-reload`.
    fn daemon_reload(&self) -> Result<(), EffectError>;
    /// Whether the unit is enabled.
    fn is_enabled(&self, unit: &str) -> bool;
    /// Whether the unit is active.
    fn is_active(&self, unit: &str) -> bool;
    /// `systemctl enable` (which also reloads systemd).
    fn enable(&self, unit: &str) -> Result<(), EffectError>;
    /// `systemctl enable --no-reload`: the install links only, for a caller that has just
    /// reloaded systemd itself.
    fn enable_without_reload(&self, unit: &str) -> Result<(), EffectError>;
    /// `systemctl disable`.
    fn disable(&self, unit: &str) -> Result<(), EffectError>;
    /// `systemctl start`.
    fn start(&self, unit: &str) -> Result<(), EffectError>;
    /// `systemctl restart`.
    fn restart(&self, unit: &str) -> Result<(), EffectError>;
    /// `systemctl stop`.
    fn stop(&self, unit: &str) -> Result<(), EffectError>;
    /// Waits, at most `timeout`, until the unit has no job queued or running: a start or
    /// restart asked without blocking has run to its end (for a restart, the old process is
    /// gone and the new one started, or failed). Until then the old process may still answer
    /// on the unit's socket while it is being stopped.
    fn settle(&self, unit: &str, timeout: Duration) -> Result<(), EffectError>;
}

/// The real systemd, through `systemctl`.
pub struct Systemctl;

const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);

impl Systemctl {
    fn run(&self, args: &[&str]) -> Result<String, EffectError> {
        run_command("systemctl", args, SYSTEMCTL_TIMEOUT)
    }
}

impl Systemd for Systemctl {
    fn daemon_reload(&self) -> Result<(), EffectError> {
        self.run(&["daemon-reload"]).map(drop)
    }
    fn is_enabled(&self, unit: &str) -> bool {
        self.run(&["is-enabled", "--quiet", unit]).is_ok()
    }
    fn is_active(&self, unit: &str) -> bool {
        self.run(&["is-active", "--quiet", unit]).is_ok()
    }
    fn enable(&self, unit: &str) -> Result<(), EffectError> {
        self.run(&["enable", unit]).map(drop)
    }
    fn enable_without_reload(&self, unit: &str) -> Result<(), EffectError> {
        self.run(&["enable", "--no-reload", unit]).map(drop)
    }
    fn disable(&self, unit: &str) -> Result<(), EffectError> {
        self.run(&["disable", unit]).map(drop)
    }
    fn start(&self, unit: &str) -> Result<(), EffectError> {
        // --no-block: a unit ordered after cloud-final would otherwise deadlock userdata.
        self.run(&["start", "--no-block", unit]).map(drop)
    }
    fn restart(&self, unit: &str) -> Result<(), EffectError> {
        self.run(&["restart", "--no-block", unit]).map(drop)
    }
    fn stop(&self, unit: &str) -> Result<(), EffectError> {
        self.run(&["stop", unit]).map(drop)
    }
    fn settle(&self, unit: &str, timeout: Duration) -> Result<(), EffectError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        // `Job=ID` while a job is queued or running; nothing once there is none (systemd
        // 219 and later, without `--value`, which is 230's).
        while has_job(&self.run(&["show", "-p", "Job", unit])?) {
            if started.elapsed() >= timeout {
                return Err(EffectError {
                    what: format!("systemctl show -p Job {unit}"),
                    detail: format!("its start or restart did not finish within {timeout:?}"),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Whether `systemctl show -p Job` names a job.
fn has_job(show: &str) -> bool {
    show.lines()
        .filter_map(|l| l.strip_prefix("Job="))
        .any(|id| id.trim().parse::<u32>().is_ok_and(|id| id > 0))
}

/// A systemd double that records calls and keeps unit state in memory.
#[derive(Default)]
pub struct RecordingSystemd {
    /// Calls in order, e.g. `enable kubelet.service` (shared, so a test keeps a handle).
    pub calls: std::sync::Arc<Mutex<Vec<String>>>,
    enabled: Mutex<Vec<String>>,
    active: Mutex<Vec<String>>,
}

impl RecordingSystemd {
    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
    fn set(list: &Mutex<Vec<String>>, unit: &str, on: bool) {
        let mut l = list.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|u| u != unit);
        if on {
            l.push(unit.to_owned());
        }
    }
}

impl Systemd for RecordingSystemd {
    fn daemon_reload(&self) -> Result<(), EffectError> {
        self.record("daemon-reload".into());
        Ok(())
    }
    fn is_enabled(&self, unit: &str) -> bool {
        self.enabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|u| u == unit)
    }
    fn is_active(&self, unit: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|u| u == unit)
    }
    fn enable(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("enable {unit}"));
        Self::set(&self.enabled, unit, true);
        Ok(())
    }
    fn enable_without_reload(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("enable --no-reload {unit}"));
        Self::set(&self.enabled, unit, true);
        Ok(())
    }
    fn disable(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("disable {unit}"));
        Self::set(&self.enabled, unit, false);
        Ok(())
    }
    fn start(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("start {unit}"));
        Self::set(&self.active, unit, true);
        Ok(())
    }
    fn restart(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("restart {unit}"));
        Self::set(&self.active, unit, true);
        Ok(())
    }
    fn stop(&self, unit: &str) -> Result<(), EffectError> {
        self.record(format!("stop {unit}"));
        Self::set(&self.active, unit, false);
        Ok(())
    }
    fn settle(&self, _unit: &str, _timeout: Duration) -> Result<(), EffectError> {
        // Its starts and restarts are done when they return.
        Ok(())
    }
}

/// The container runtime's API sockets.
pub trait Cri: Send + Sync {
    /// Waits until a gRPC server answers on the socket, or the timeout passes.
    fn wait_ready(&self, socket: &Path, timeout: Duration) -> Result<(), EffectError>;
    /// Waits until the Docker Engine answers `GET /_ping` on its socket (the dockershim era,
    /// where the kubelet itself talks to docker), or the timeout passes.
    fn wait_docker(&self, socket: &Path, timeout: Duration) -> Result<(), EffectError>;
}

/// How often [`CriSocket`] probes a socket that does not answer yet.
const CRI_POLL: Duration = Duration::from_millis(50);

/// The real checks: a unix-socket connection and the first bytes of each protocol.
pub struct CriSocket;

impl CriSocket {
    fn connect(socket: &Path) -> Result<std::os::unix::net::UnixStream, String> {
        let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// The HTTP/2 connection preface that every gRPC server (containerd, cri-dockerd) answers
    /// with a SETTINGS frame.
    fn probe_grpc(socket: &Path) -> Result<(), String> {
        use std::io::{Read, Write};
        let mut s = Self::connect(socket)?;
        // Client preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .map_err(|e| e.to_string())?;
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .map_err(|e| e.to_string())?;
        let mut header = [0u8; 9];
        s.read_exact(&mut header).map_err(|e| e.to_string())?;
        if header[3] == 4 {
            Ok(())
        } else {
            Err(format!("unexpected first frame type {}", header[3]))
        }
    }

    /// Docker's `GET /_ping`, answered `200 OK` once the daemon serves its API.
    fn probe_docker(socket: &Path) -> Result<(), String> {
        use std::io::{Read, Write};
        let mut s = Self::connect(socket)?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).map_err(|e| e.to_string())?;
        if head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200" {
            Ok(())
        } else {
            Err(format!("answered {:?}", String::from_utf8_lossy(&head)))
        }
    }

    fn poll(
        what: String,
        timeout: Duration,
        probe: impl Fn() -> Result<(), String>,
    ) -> Result<(), EffectError> {
        let started = Instant::now();
        loop {
            match probe() {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() >= timeout => {
                    return Err(EffectError {
                        what,
                        detail: format!("no answer within {timeout:?}: {e}"),
                    })
                }
                // A probe is one local connect and a few bytes: polled often, the wait ends
                // within 50 ms of the runtime answering (the kubelet is started right after).
                Err(_) => std::thread::sleep(CRI_POLL),
            }
        }
    }
}

impl Cri for CriSocket {
    fn wait_ready(&self, socket: &Path, timeout: Duration) -> Result<(), EffectError> {
        let what = format!("waiting for the CRI socket {}", socket.display());
        Self::poll(what, timeout, || Self::probe_grpc(socket))
    }

    fn wait_docker(&self, socket: &Path, timeout: Duration) -> Result<(), EffectError> {
        let what = format!("waiting for the Docker Engine on {}", socket.display());
        Self::poll(what, timeout, || Self::probe_docker(socket))
    }
}

/// A CRI double that is always ready.
pub struct ReadyCri;

impl Cri for ReadyCri {
    fn wait_ready(&self, _socket: &Path, _timeout: Duration) -> Result<(), EffectError> {
        Ok(())
    }

    fn wait_docker(&self, _socket: &Path, _timeout: Duration) -> Result<(), EffectError> {
        Ok(())
    }
}

/// The effects a join or reset may use.
pub struct Effects {
    /// The filesystem root.
    pub root: fs::Root,
    /// systemd.
    pub systemd: Box<dyn Systemd>,
    /// The package manager, if any.
    pub packages: Option<Box<dyn Packages>>,
    /// The CRI check.
    pub cri: Box<dyn Cri>,
    /// The node's pods and containers (reset).
    pub containers: Box<dyn containers::Containers>,
    /// Sysctls, modules, swap, mounts.
    pub kernel: Box<dyn kernel::Kernel>,
    /// iptables, IPVS, interfaces.
    pub network: Box<dyn network::Network>,
    /// Container images in the runtime (air-gap imports).
    pub images: Box<dyn images::Images>,
    /// Host facts preflight checks.
    pub probe: Box<dyn probe::Probe>,
    /// Whether host services, packages, sysctls and swap may be touched (root is `/`).
    pub host: bool,
}

impl Effects {
    /// Real effects for this root. With a root other than `/`, host steps are skipped.
    pub fn real(root: fs::Root) -> Effects {
        let host = root.is_host();
        Effects {
            root,
            systemd: Box::new(Systemctl),
            packages: if host { detect_packages() } else { None },
            cri: Box::new(CriSocket),
            containers: Box::new(containers::RuntimeContainers),
            kernel: Box::new(kernel::HostKernel),
            network: Box::new(network::HostNetwork),
            images: Box::new(images::RuntimeImages),
            probe: Box::new(probe::HostProbe),
            host,
        }
    }

    /// Test doubles for every effect under this root: nothing on the host is touched, each
    /// double records what it was asked. `host` starts false; tests that exercise host steps
    /// set it.
    pub fn doubles(root: fs::Root) -> Effects {
        Effects {
            root,
            systemd: Box::new(RecordingSystemd::default()),
            packages: Some(Box::new(RecordingPackages::default())),
            cri: Box::new(ReadyCri),
            containers: Box::new(containers::RecordingContainers::default()),
            kernel: Box::new(kernel::RecordingKernel::default()),
            network: Box::new(network::RecordingNetwork::default()),
            images: Box::new(images::RecordingImages::default()),
            probe: Box::new(probe::FixedProbe::default()),
            host: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_has_a_job_while_show_names_one() {
        assert!(has_job("Job=1234\n"));
        assert!(!has_job(""));
        assert!(!has_job("Job=\n"));
        assert!(!has_job("Job=0\n"));
    }

    #[test]
    fn cri_probe_speaks_http2() {
        let dir = tempfile::tempdir().expect("tmp");
        let sock = dir.path().join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = listener.accept().expect("accept");
            let mut preface = [0u8; 24 + 9];
            c.read_exact(&mut preface).expect("preface");
            assert!(preface.starts_with(b"PRI * HTTP/2.0"));
            c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).expect("settings");
        });
        CriSocket
            .wait_ready(&sock, Duration::from_secs(5))
            .expect("ready");
        server.join().expect("server");
        let err = CriSocket
            .wait_ready(&dir.path().join("absent.sock"), Duration::from_millis(300))
            .expect_err("absent");
        assert!(err.to_string().contains("no answer within"), "{err}");
    }

    #[test]
    fn docker_probe_wants_a_200_ping() {
        let dir = tempfile::tempdir().expect("tmp");
        let sock = dir.path().join("docker.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\nOK",
            ] {
                let (mut c, _) = listener.accept().expect("accept");
                let mut request = [0u8; 16];
                c.read_exact(&mut request).expect("request");
                assert!(request.starts_with(b"GET /_ping "));
                c.write_all(answer.as_bytes()).expect("answer");
            }
        });
        CriSocket
            .wait_docker(&sock, Duration::from_secs(5))
            .expect("ready after one 503");
        server.join().expect("server");
    }
}
