//! The kernel as join and reset touch it: sysctls, modules, swap and mounts. The real
//! implementation reads and writes `/proc` and `/sys` and runs `modprobe`, `swapoff`/`swapon`,
//! `umount2(2)`; the double keeps everything in memory and records what it was asked.

use super::{run_command, EffectError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Kernel state join and reset read and change.
pub trait Kernel: Send + Sync {
    /// A sysctl's current value (dotted key), if readable.
    fn sysctl(&self, key: &str) -> Option<String>;
    /// Sets a sysctl at runtime.
    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), EffectError>;
    /// Whether a kernel feature is present: loaded or built in.
    fn module_present(&self, name: &str) -> bool;
    /// `modprobe NAME`.
    fn load_module(&self, name: &str) -> Result<(), EffectError>;
    /// The active swap devices and files.
    fn active_swaps(&self) -> Vec<String>;
    /// `swapoff -a`.
    fn swap_off(&self) -> Result<(), EffectError>;
    /// `swapon` for each of these swap devices and files that is not active now (those join
    /// turned off).
    fn swap_on(&self, devices: &[String]) -> Result<(), EffectError>;
    /// Mount points strictly under `dir` (a real path), deepest first.
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf>;
    /// Unmounts one mount point (a real path).
    fn unmount(&self, path: &Path) -> Result<(), EffectError>;
}

/// The running kernel.
pub struct HostKernel;

fn proc_sys(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// mountinfo's mount point field, with the octal escapes the kernel writes (`\040` for a
/// space, `\011`, `\012`, `\134`) decoded.
pub fn unescape_mount_point(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Every mount point in a mountinfo text, in mount order.
fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_point)
}

/// Mount points strictly under `dir` in a mountinfo text, deepest first, and a path once per
/// mount on it: mounts stacked on one path go one `umount` at a time, the last mounted first.
pub fn mounts_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mount_points(mountinfo)
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Whether a mountinfo text still has a mount on `path`.
pub fn mounted_at(mountinfo: &str, path: &Path) -> bool {
    mount_points(mountinfo).any(|m| m == path)
}

impl Kernel for HostKernel {
    fn sysctl(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(proc_sys(key))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), EffectError> {
        std::fs::write(proc_sys(key), format!("{value}\n")).map_err(|e| EffectError {
            what: format!("setting {key}"),
            detail: format!("{e} (is /proc/sys read-only, as in a container?)"),
        })
    }

    fn module_present(&self, name: &str) -> bool {
        if Path::new("/sys/module").join(name).exists() {
            return true;
        }
        match name {
            "overlay" => std::fs::read_to_string("/proc/filesystems")
                .is_ok_and(|f| f.lines().any(|l| l.trim_end().ends_with("overlay"))),
            "br_netfilter" => Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
            _ => false,
        }
    }

    fn load_module(&self, name: &str) -> Result<(), EffectError> {
        run_command("modprobe", &[name], Duration::from_secs(30)).map(drop)
    }

    fn active_swaps(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/swaps")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    fn swap_off(&self) -> Result<(), EffectError> {
        run_command("swapoff", &["-a"], Duration::from_secs(120)).map(drop)
    }

    fn swap_on(&self, devices: &[String]) -> Result<(), EffectError> {
        let off = inactive(devices, &self.active_swaps());
        if off.is_empty() {
            return Ok(());
        }
        run_command("swapon", &off, Duration::from_secs(120)).map(drop)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mounts_in(&info, dir)
    }

    fn unmount(&self, path: &Path) -> Result<(), EffectError> {
        match nix::mount::umount2(path, nix::mount::MntFlags::empty()) {
            Ok(()) => Ok(()),
            // Not a mount point (any more): a shared mount's earlier unmount took its peer on
            // this path along, which is what was asked.
            Err(nix::errno::Errno::EINVAL)
                if std::fs::read_to_string("/proc/self/mountinfo")
                    .is_ok_and(|info| !mounted_at(&info, path)) =>
            {
                tracing::debug!("{} was already unmounted", path.display());
                Ok(())
            }
            Err(e) => Err(EffectError {
                what: format!("unmounting {}", path.display()),
                detail: e.to_string(),
            }),
        }
    }
}

/// Those of `devices` not among the `active` swaps.
fn inactive<'a>(devices: &'a [String], active: &[String]) -> Vec<&'a str> {
    devices
        .iter()
        .filter(|d| !active.contains(d))
        .map(String::as_str)
        .collect()
}

/// An in-memory kernel that records what it was asked.
#[derive(Default)]
pub struct RecordingKernel {
    /// Sysctls by dotted key.
    pub sysctls: Mutex<BTreeMap<String, String>>,
    /// Every change asked, as `verb target` (shared, so a test keeps a handle).
    pub calls: std::sync::Arc<Mutex<Vec<String>>>,
    /// Mount points to report (real paths).
    pub mounts: Vec<PathBuf>,
    /// Swap devices to report as active.
    pub swaps: Vec<String>,
    /// Kernel modules to report as present.
    pub modules: Vec<String>,
}

impl RecordingKernel {
    fn note(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

impl Kernel for RecordingKernel {
    fn sysctl(&self, key: &str) -> Option<String> {
        self.sysctls.lock().ok()?.get(key).cloned()
    }
    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), EffectError> {
        self.note(format!("sysctl {key}={value}"));
        if let Ok(mut s) = self.sysctls.lock() {
            s.insert(key.to_owned(), value.to_owned());
        }
        Ok(())
    }
    fn module_present(&self, name: &str) -> bool {
        self.modules.iter().any(|m| m == name)
    }
    fn load_module(&self, name: &str) -> Result<(), EffectError> {
        self.note(format!("modprobe {name}"));
        Ok(())
    }
    fn active_swaps(&self) -> Vec<String> {
        self.swaps.clone()
    }
    fn swap_off(&self) -> Result<(), EffectError> {
        self.note("swapoff".into());
        Ok(())
    }
    fn swap_on(&self, devices: &[String]) -> Result<(), EffectError> {
        let off = inactive(devices, &self.swaps);
        if !off.is_empty() {
            self.note(format!("swapon {}", off.join(" ")));
        }
        Ok(())
    }
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .filter(|m| m.starts_with(dir))
            .cloned()
            .collect()
    }
    fn unmount(&self, path: &Path) -> Result<(), EffectError> {
        self.note(format!("umount {}", path.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded_and_the_deepest_comes_first() {
        let info = "36 25 0:32 / /var/lib/kubelet/pods/a\\040b/volumes/x rw - tmpfs tmpfs rw\n\
                    37 25 0:33 / /var/lib/kubelet/pods/a\\040b rw - tmpfs tmpfs rw\n\
                    38 25 0:34 / /var/lib/kubelet rw - ext4 /dev/vda rw\n\
                    39 25 0:35 / /var/lib/kubelet/tab\\011\\134x rw - tmpfs tmpfs rw\n\
                    40 25 0:36 / /srv rw - tmpfs tmpfs rw\n";
        let found = mounts_in(info, Path::new("/var/lib/kubelet"));
        assert_eq!(
            found,
            [
                PathBuf::from("/var/lib/kubelet/pods/a b/volumes/x"),
                PathBuf::from("/var/lib/kubelet/pods/a b"),
                PathBuf::from("/var/lib/kubelet/tab\t\\x"),
            ]
        );
    }

    #[test]
    fn only_swaps_not_active_are_turned_on() {
        let recorded = ["/dev/zram0".to_owned(), "/swapfile".to_owned()];
        assert_eq!(
            inactive(&recorded, &["/swapfile".to_owned()]),
            ["/dev/zram0"]
        );
        assert!(inactive(&recorded, &recorded).is_empty());
    }

    #[test]
    fn stacked_mounts_are_each_listed_for_their_own_unmount() {
        // A volume mounted twice on one path (a retried mount, the second on the first), and
        // another volume.
        let info = "40 25 0:40 / /var/lib/kubelet/pods/p/volumes/a rw - ext4 /dev/vdb rw\n\
                    41 40 0:40 / /var/lib/kubelet/pods/p/volumes/a rw - ext4 /dev/vdb rw\n\
                    42 25 0:42 / /var/lib/kubelet/pods/p/volumes/b rw - tmpfs tmpfs rw\n";
        let found = mounts_in(info, Path::new("/var/lib/kubelet"));
        let a = PathBuf::from("/var/lib/kubelet/pods/p/volumes/a");
        assert_eq!(found.iter().filter(|m| **m == a).count(), 2, "{found:?}");
        assert_eq!(found.len(), 3);
        assert!(mounted_at(info, &a));
        assert!(!mounted_at(info, Path::new("/var/lib/kubelet/pods/p")));
    }
}
