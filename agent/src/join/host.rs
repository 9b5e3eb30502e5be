//! The host phase: what the CNI directories already hold (reset keeps it), swap off when asked
//! (now and at boot), the kernel modules and sysctls the kubelet and CNI plugins need, each
//! journaled.

use crate::apply::{Applier, ApplyError};
use crate::sources::settings::Settings;
use std::path::Path;

/// Kernel modules the kubelet and CNI plugins need.
pub const MODULES_FILE: &str = "/etc/modules-load.d/node-attach.conf";
/// Sysctls the kubelet and CNI plugins need.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-node-attach.conf";
/// The sysctls join sets, with their values.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.ip_forward", "1"),
];
/// The kernel modules join loads.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];

/// Applies the host phase.
pub fn apply(applier: &mut Applier<'_>, settings: &Settings) -> Result<(), ApplyError> {
    // Before anything a CNI plugin could write: what is there now is another tool's.
    for dir in crate::model::paths::CNI_DIRS {
        applier.record_found(Path::new(dir))?;
    }
    if settings.disable_swap {
        swap_off(applier)?;
    }
    let mut modules = String::from("# Written by node-attach; removed by node-attach reset.\n");
    for m in MODULES {
        modules.push_str(m);
        modules.push('\n');
    }
    applier.file(Path::new(MODULES_FILE), 0o644, modules.as_bytes(), false)?;
    for m in MODULES {
        let present = !applier.effects().host || applier.effects().kernel.module_present(m);
        applier.module(m, present)?;
    }
    let mut sysctl = String::from("# Written by node-attach; removed by node-attach reset.\n");
    for (k, v) in SYSCTLS {
        sysctl.push_str(&format!("{k} = {v}\n"));
    }
    applier.file(Path::new(SYSCTL_FILE), 0o644, sysctl.as_bytes(), false)?;
    for (k, v) in SYSCTLS {
        applier.sysctl(k, v)?;
    }
    Ok(())
}

/// Swap off now, and its fstab entries commented out so it stays off after a reboot.
fn swap_off(applier: &mut Applier<'_>) -> Result<(), ApplyError> {
    let devices = if applier.effects().host {
        applier.effects().kernel.active_swaps()
    } else {
        Vec::new()
    };
    applier.swap_off(devices)?;
    if let Some(fstab) = applier.effects().root.read(Path::new("/etc/fstab"))? {
        let text = String::from_utf8_lossy(&fstab);
        let edited = disable_swap_lines(&text);
        if edited != text {
            applier.file(Path::new("/etc/fstab"), 0o644, edited.as_bytes(), false)?;
        }
    }
    Ok(())
}

/// Comments out active swap entries of an fstab (`#node-attach# ` prefix, so reset can tell them
/// apart; the journal keeps the original bytes anyway).
pub fn disable_swap_lines(fstab: &str) -> String {
    let mut out = String::new();
    for line in fstab.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.trim_start().starts_with('#') && fields.len() >= 3 && fields[2] == "swap" {
            out.push_str("#node-attach# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_lines_are_commented_once() {
        let fstab =
            "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n# /old none swap sw 0 0\n";
        let once = disable_swap_lines(fstab);
        assert_eq!(once, "UUID=1 / ext4 defaults 0 1\n#node-attach# /swapfile none swap sw 0 0\n# /old none swap sw 0 0\n");
        assert_eq!(disable_swap_lines(&once), once);
    }
}
