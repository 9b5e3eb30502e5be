//! The OS package manager: apt (Debian, Ubuntu), dnf or yum (RHEL, CentOS, Alibaba Cloud
//! Linux, Fedora) and zypper (SUSE), detected. An install reports exactly which packages it
//! added (the dependencies it pulled in too, from the installed list before and after), so the
//! journal can record them and reset removes exactly those. Removal goes through the low-level
//! tool (`dpkg --purge`, `rpm -e`), which refuses rather than removing a package something
//! else still depends on.

use super::{run_command, run_command_env, which, EffectError};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PACKAGE_TIMEOUT: Duration = Duration::from_secs(600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// apt-get waits up to 300 s for the dpkg lock another apt or dpkg holds (unattended-upgrades
/// and apt-daily run at a cloud VM's first boot, when join runs), rather than failing at once
/// with "Could not get lock /var/lib/dpkg/lock-frontend"; within [`PACKAGE_TIMEOUT`]. apt
/// before 1.9.11 ignores the option.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";

/// apt's and debconf's questions answered with their defaults: no terminal is there to ask.
const NONINTERACTIVE: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];
/// zypper waits up to 300 s for the lock another zypper or PackageKit holds, rather than
/// failing at once with "System management is locked".
const ZYPP_LOCK_WAIT: &[(&str, &str)] = &[("ZYPP_LOCK_TIMEOUT", "300")];

/// How long `dpkg --purge` is tried again while another apt or dpkg holds the dpkg lock (dpkg
/// has no wait of its own: it fails at once), and the pause between tries.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(300);
const DPKG_LOCK_PAUSE: Duration = Duration::from_secs(5);

/// Whether dpkg refused because another apt or dpkg holds its lock (unattended-upgrades).
fn dpkg_locked(e: &EffectError) -> bool {
    e.detail.contains("locked by another process")
}

/// Runs `op` until it succeeds, fails for another reason than `locked`, or another try would
/// start after `wait`.
fn while_locked<T>(
    wait: Duration,
    pause: Duration,
    locked: impl Fn(&EffectError) -> bool,
    mut op: impl FnMut() -> Result<T, EffectError>,
) -> Result<T, EffectError> {
    let deadline = Instant::now() + wait;
    loop {
        match op() {
            Err(e) if locked(&e) && Instant::now() + pause < deadline => {
                tracing::info!("{}: waiting for the package lock: {}", e.what, e.detail);
                std::thread::sleep(pause);
            }
            done => return done,
        }
    }
}

/// `apt-get` arguments, with the wait for the dpkg lock first.
fn apt_get_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-o", APT_LOCK_WAIT];
    all.extend_from_slice(args);
    all
}

/// The OS package manager.
pub trait Packages: Send + Sync {
    /// `apt`, `dnf`, `yum` or `zypper`.
    fn name(&self) -> &'static str;
    /// The installed version of a package, if installed.
    fn installed_version(&self, package: &str) -> Option<String>;
    /// Installs a package (at `version` when given); returns every package the transaction
    /// added (the package and the dependencies it pulled in), sorted.
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError>;
    /// Removes packages join added (never one something else still depends on).
    fn remove(&self, packages: &[String]) -> Result<(), EffectError>;
}

/// apt (Debian, Ubuntu).
pub struct Apt;
/// dnf or yum.
pub struct Dnf(pub &'static str);
/// zypper (SUSE, openSUSE).
pub struct Zypper;

fn added(before: &BTreeSet<String>, after: BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

impl Apt {
    fn installed() -> Result<BTreeSet<String>, EffectError> {
        let out = run_command(
            "dpkg-query",
            &["-W", "-f", "${Package}\t${db:Status-Abbrev}\n"],
            QUERY_TIMEOUT,
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, status)| status.starts_with("ii"))
            .map(|(p, _)| p.to_owned())
            .collect())
    }

    /// A configuration file already on the machine (the operator's, or one left by an earlier
    /// install) is kept, not asked about: with no terminal, dpkg's question would fail the
    /// install ("end of file on stdin at conffile prompt"). Join merges its settings into the
    /// file as it then is.
    fn install_args(spec: &str) -> Vec<&str> {
        apt_get_args(&[
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            spec,
        ])
    }

    fn update_args() -> Vec<&'static str> {
        apt_get_args(&["update", "-q"])
    }

    fn apt_install(spec: &str) -> Result<String, EffectError> {
        run_command_env(
            "apt-get",
            &Apt::install_args(spec),
            NONINTERACTIVE,
            PACKAGE_TIMEOUT,
        )
    }
}

impl Packages for Apt {
    fn name(&self) -> &'static str {
        "apt"
    }
    fn installed_version(&self, package: &str) -> Option<String> {
        let out = run_command(
            "dpkg-query",
            &["-W", "-f", "${Status}\t${Version}", package],
            QUERY_TIMEOUT,
        )
        .ok()?;
        let (status, version) = out.split_once('\t')?;
        status
            .ends_with(" installed")
            .then(|| version.trim().to_owned())
    }
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError> {
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_owned(),
        };
        let before = Apt::installed()?;
        if Apt::apt_install(&spec).is_err() {
            // The package lists may be missing or stale on a fresh image.
            run_command("apt-get", &Apt::update_args(), PACKAGE_TIMEOUT)?;
            Apt::apt_install(&spec)?;
        }
        Ok(added(&before, Apt::installed()?))
    }
    fn remove(&self, packages: &[String]) -> Result<(), EffectError> {
        let mut args = vec!["--purge"];
        args.extend(packages.iter().map(String::as_str));
        while_locked(DPKG_LOCK_WAIT, DPKG_LOCK_PAUSE, dpkg_locked, || {
            run_command("dpkg", &args, PACKAGE_TIMEOUT)
        })
        .map(drop)
    }
}

fn rpm_installed() -> Result<BTreeSet<String>, EffectError> {
    let out = run_command("rpm", &["-qa", "--qf", "%{NAME}\n"], QUERY_TIMEOUT)?;
    Ok(out.lines().map(str::to_owned).collect())
}

fn rpm_version(package: &str) -> Option<String> {
    run_command(
        "rpm",
        &["-q", "--qf", "%{VERSION}-%{RELEASE}", package],
        QUERY_TIMEOUT,
    )
    .ok()
}

fn rpm_remove(packages: &[String]) -> Result<(), EffectError> {
    let mut args = vec!["-e"];
    args.extend(packages.iter().map(String::as_str));
    run_command("rpm", &args, PACKAGE_TIMEOUT).map(drop)
}

impl Packages for Dnf {
    fn name(&self) -> &'static str {
        self.0
    }
    fn installed_version(&self, package: &str) -> Option<String> {
        rpm_version(package)
    }
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError> {
        let spec = match version {
            Some(v) => format!("{package}-{v}"),
            None => package.to_owned(),
        };
        let before = rpm_installed()?;
        run_command(self.0, &["install", "-y", &spec], PACKAGE_TIMEOUT)?;
        Ok(added(&before, rpm_installed()?))
    }
    fn remove(&self, packages: &[String]) -> Result<(), EffectError> {
        rpm_remove(packages)
    }
}

impl Packages for Zypper {
    fn name(&self) -> &'static str {
        "zypper"
    }
    fn installed_version(&self, package: &str) -> Option<String> {
        rpm_version(package)
    }
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError> {
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_owned(),
        };
        let before = rpm_installed()?;
        run_command_env(
            "zypper",
            &["--non-interactive", "install", "--no-recommends", &spec],
            ZYPP_LOCK_WAIT,
            PACKAGE_TIMEOUT,
        )?;
        Ok(added(&before, rpm_installed()?))
    }
    fn remove(&self, packages: &[String]) -> Result<(), EffectError> {
        rpm_remove(packages)
    }
}

/// The host's package manager, if one is known: apt, dnf, yum, zypper, in that order.
pub fn detect_packages() -> Option<Box<dyn Packages>> {
    if which("apt-get").is_some() && which("dpkg-query").is_some() {
        return Some(Box::new(Apt));
    }
    if which("rpm").is_some() {
        if which("dnf").is_some() {
            return Some(Box::new(Dnf("dnf")));
        }
        if which("yum").is_some() {
            return Some(Box::new(Dnf("yum")));
        }
        if which("zypper").is_some() {
            return Some(Box::new(Zypper));
        }
    }
    None
}

/// A shared handle works as the package manager it holds (a test keeps one to look at a double).
impl<T: Packages> Packages for std::sync::Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn installed_version(&self, package: &str) -> Option<String> {
        (**self).installed_version(package)
    }
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError> {
        (**self).install(package, version)
    }
    fn remove(&self, packages: &[String]) -> Result<(), EffectError> {
        (**self).remove(packages)
    }
}

/// A package manager double: installed packages in memory; an install adds the package and
/// the dependencies registered for it ([`RecordingPackages::depends`]).
#[derive(Default)]
pub struct RecordingPackages {
    /// Installed packages and versions.
    pub installed: Mutex<Vec<(String, String)>>,
    /// Package → the dependencies an install pulls in.
    pub depends: Mutex<Vec<(String, Vec<String>)>>,
    /// Calls in order.
    pub calls: Mutex<Vec<String>>,
}

impl RecordingPackages {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Packages for RecordingPackages {
    fn name(&self) -> &'static str {
        "test"
    }
    fn installed_version(&self, package: &str) -> Option<String> {
        Self::lock(&self.installed)
            .iter()
            .find(|(p, _)| p == package)
            .map(|(_, v)| v.clone())
    }
    fn install(&self, package: &str, version: Option<&str>) -> Result<Vec<String>, EffectError> {
        Self::lock(&self.calls).push(format!("install {package}"));
        let deps: Vec<String> = Self::lock(&self.depends)
            .iter()
            .find(|(p, _)| p == package)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let mut installed = Self::lock(&self.installed);
        let mut new = Vec::new();
        for p in std::iter::once(package.to_owned()).chain(deps) {
            if !installed.iter().any(|(i, _)| *i == p) {
                installed.push((p.clone(), version.unwrap_or("1.0").to_owned()));
                new.push(p);
            }
        }
        new.sort();
        Ok(new)
    }
    fn remove(&self, packages: &[String]) -> Result<(), EffectError> {
        Self::lock(&self.calls).push(format!("remove {}", packages.join(" ")));
        Self::lock(&self.installed).retain(|(p, _)| !packages.contains(p));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_is_tried_again_while_another_holds_its_lock() {
        let locked = |what: &str| EffectError {
            what: "dpkg --purge containerd".into(),
            detail: format!(
                "exit status 2: dpkg: error: {what} / Note: removing the lock file is always \
                 wrong, and can end up damaging the / locked area and the entire system. See \
                 the dpkg FAQ (db-lock)."
            ),
        };
        // dpkg 1.20+, and dpkg 1.19's two locks.
        for e in [
            locked("dpkg frontend lock was locked by another process with pid 4242"),
            locked("dpkg frontend is locked by another process"),
            locked("dpkg status database is locked by another process"),
        ] {
            assert!(dpkg_locked(&e), "{e}");
        }
        let refused = EffectError {
            what: "dpkg --purge libblockdev".into(),
            detail: "exit status 1: dpkg: dependency problems prevent removal of libblockdev: \
                     / udisks2 depends on libblockdev"
                .into(),
        };
        assert!(!dpkg_locked(&refused));
        let wait = Duration::from_secs(60);
        let mut tries = 0;
        let done = while_locked(wait, Duration::ZERO, dpkg_locked, || {
            tries += 1;
            match tries {
                1 | 2 => Err(locked(
                    "dpkg frontend lock was locked by another process with pid 1",
                )),
                _ => Ok(tries),
            }
        });
        assert_eq!(done.expect("after the lock"), 3);
        let mut tries = 0;
        let refused = while_locked(wait, Duration::ZERO, dpkg_locked, || {
            tries += 1;
            Err::<(), _>(EffectError {
                what: refused.what.clone(),
                detail: refused.detail.clone(),
            })
        });
        assert!(refused.is_err());
        assert_eq!(tries, 1, "a refusal is not tried again");
        let mut tries = 0;
        let held = while_locked(Duration::ZERO, Duration::ZERO, dpkg_locked, || {
            tries += 1;
            Err::<(), _>(locked("dpkg frontend is locked by another process"))
        });
        assert!(held
            .expect_err("still locked")
            .to_string()
            .contains("locked by another"));
        assert_eq!(tries, 1, "no time left: not tried again");
    }

    #[test]
    fn apt_keeps_a_configuration_file_already_there_without_asking() {
        let args = Apt::install_args("containerd");
        let options: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-o")
            .map(|w| w[1])
            .collect();
        assert!(
            options.contains(&"Dpkg::Options::=--force-confold"),
            "{args:?}"
        );
        assert!(
            options.contains(&"Dpkg::Options::=--force-confdef"),
            "{args:?}"
        );
        assert_eq!(args.last(), Some(&"containerd"));
        assert_eq!(NONINTERACTIVE, [("DEBIAN_FRONTEND", "noninteractive")]);
    }

    #[test]
    fn apt_waits_for_the_dpkg_lock_instead_of_failing_at_once() {
        for args in [Apt::install_args("containerd"), Apt::update_args()] {
            assert_eq!(args[..2], ["-o", APT_LOCK_WAIT], "{args:?}");
        }
        let wait = APT_LOCK_WAIT
            .strip_prefix("DPkg::Lock::Timeout=")
            .expect("the option");
        let wait = Duration::from_secs(wait.parse().expect("seconds"));
        assert!(
            wait < PACKAGE_TIMEOUT,
            "the lock wait must leave time to install"
        );
    }

    #[test]
    fn the_double_reports_what_an_install_added() {
        let pm = RecordingPackages::default();
        pm.installed
            .lock()
            .expect("lock")
            .push(("runc".into(), "1".into()));
        pm.depends.lock().expect("lock").push((
            "containerd".into(),
            vec!["runc".into(), "libseccomp2".into()],
        ));
        assert_eq!(
            pm.install("containerd", None).expect("install"),
            ["containerd", "libseccomp2"]
        );
        assert_eq!(
            added(
                &BTreeSet::from(["a".to_owned()]),
                BTreeSet::from(["a".to_owned(), "b".to_owned()])
            ),
            ["b"]
        );
    }
}
