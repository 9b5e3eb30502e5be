//! The host network as reset cleans it: iptables (and ip6tables) chains kube-proxy and CNI
//! plugins own, IPVS virtual servers, and the interfaces CNI plugins make. The real
//! implementation runs `iptables-save`, `iptables-restore`, `iptables`, `ipvsadm` and
//! `ip link`; the double records.

use super::{run_command, run_command_input, which, EffectError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// iptables or ip6tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// The tool's name.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The dump tool's name.
    pub fn save_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The batch tool's name.
    pub fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// What reset changes in the host's network.
pub trait Network: Send + Sync {
    /// `iptables-save` of this family; None when the tool is missing or fails.
    fn save(&self, family: Family) -> Option<String>;
    /// One `iptables` command of this family.
    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError>;
    /// `iptables-restore --noflush` of this family, with `batch` (iptables-save's format) on
    /// its standard input: only the tables and chains the batch names change.
    fn restore(&self, family: Family, batch: &str) -> Result<(), EffectError>;
    /// `ipvsadm --clear`; None when there is no ipvsadm.
    fn clear_ipvs(&self) -> Option<Result<(), EffectError>>;
    /// Whether an interface exists.
    fn link_exists(&self, name: &str) -> bool;
    /// `ip link delete NAME`.
    fn delete_link(&self, name: &str) -> Result<(), EffectError>;
}

/// The host's network stack.
pub struct HostNetwork;

const TIMEOUT: Duration = Duration::from_secs(30);
/// A batch removing tens of thousands of chains (iptables-nft checks each one) takes a while.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// `iptables` arguments with `-w` first: iptables-legacy fails at once ("Another app is
/// currently holding the xtables lock", exit 4) while kube-proxy, a CNI agent, firewalld or
/// docker changes the rules; with `-w` it waits for the lock (within [`TIMEOUT`]).
/// iptables-nft accepts `-w` and has no lock.
fn iptables_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    all
}

/// `iptables-restore` arguments: `--noflush`, and `-w` when the tool's version (`iptables
/// --version`: `iptables v1.8.7 (nf_tables)`) is 1.6.2 or later. iptables-restore takes the
/// xtables lock, and has `-w` to wait for it, from 1.6.2; an older one rejects `-w` (and takes
/// no lock). An unknown version gets no `-w`.
pub fn restore_args(version: Option<&str>) -> Vec<&'static str> {
    let parsed = version.and_then(|v| {
        let word = v.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
        let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
        Some((
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    });
    match parsed {
        Some(v) if v >= (1, 6, 2) => vec!["-w", "--noflush"],
        _ => vec!["--noflush"],
    }
}

impl Network for HostNetwork {
    fn save(&self, family: Family) -> Option<String> {
        let save = family.save_tool();
        which(save)?;
        run_command(save, &[], Duration::from_secs(60)).ok()
    }

    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError> {
        run_command(family.tool(), &iptables_args(args), TIMEOUT).map(drop)
    }

    fn restore(&self, family: Family, batch: &str) -> Result<(), EffectError> {
        let tool = family.restore_tool();
        if which(tool).is_none() {
            return Err(EffectError {
                what: tool.to_owned(),
                detail: "not installed".to_owned(),
            });
        }
        let version = run_command(family.tool(), &["--version"], TIMEOUT).ok();
        let args = restore_args(version.as_deref());
        let input = batch.as_bytes().to_vec();
        run_command_input(tool, &args, input, RESTORE_TIMEOUT).map(drop)
    }

    fn clear_ipvs(&self) -> Option<Result<(), EffectError>> {
        which("ipvsadm")?;
        Some(run_command("ipvsadm", &["--clear"], TIMEOUT).map(drop))
    }

    fn link_exists(&self, name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }

    fn delete_link(&self, name: &str) -> Result<(), EffectError> {
        run_command("ip", &["link", "delete", name], TIMEOUT).map(drop)
    }
}

/// A network that serves canned `iptables-save` dumps and records every command (a batch as
/// `iptables-restore --noflush` and its lines).
#[derive(Default)]
pub struct RecordingNetwork {
    /// The iptables-save dump to serve (IPv4).
    pub dump_v4: Option<String>,
    /// The dumps later saves serve (IPv4), in order, the last one repeating; none: `dump_v4`.
    pub later_v4: Vec<String>,
    /// How many IPv4 saves were asked.
    pub saves_v4: AtomicUsize,
    /// How many batches fail (the first ones), as an iptables-restore without `--noflush` would.
    pub failing_restores: AtomicUsize,
    /// Interfaces that exist.
    pub links: Vec<String>,
    /// Commands asked, as `tool args…` (shared, so a test keeps a handle).
    pub calls: std::sync::Arc<Mutex<Vec<String>>>,
}

impl RecordingNetwork {
    fn note(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

impl Network for RecordingNetwork {
    fn save(&self, family: Family) -> Option<String> {
        if family == Family::V6 {
            return None;
        }
        match self.saves_v4.fetch_add(1, Ordering::SeqCst) {
            0 => self.dump_v4.clone(),
            n => (self.later_v4.get(n - 1).or(self.later_v4.last()).cloned())
                .or_else(|| self.dump_v4.clone()),
        }
    }
    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError> {
        self.note(format!("{} {}", family.tool(), args.join(" ")));
        Ok(())
    }
    fn restore(&self, family: Family, batch: &str) -> Result<(), EffectError> {
        let what = format!("{} --noflush", family.restore_tool());
        self.note(format!("{what}\n{batch}"));
        let fail = |n: usize| n.checked_sub(1);
        let failing = &self.failing_restores;
        if failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, fail)
            .is_ok()
        {
            let detail = "exit status 2: unrecognized option '--noflush'".to_owned();
            return Err(EffectError { what, detail });
        }
        Ok(())
    }
    fn clear_ipvs(&self) -> Option<Result<(), EffectError>> {
        None
    }
    fn link_exists(&self, name: &str) -> bool {
        self.links.iter().any(|l| l == name)
    }
    fn delete_link(&self, name: &str) -> Result<(), EffectError> {
        self.note(format!("ip link delete {name}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_waits_for_the_xtables_lock() {
        let args = iptables_args(&["-t", "nat", "-X", "KUBE-SERVICES"]);
        assert_eq!(args, ["-w", "-t", "nat", "-X", "KUBE-SERVICES"]);
    }

    #[test]
    fn restore_waits_for_the_lock_from_1_6_2() {
        let wait = ["-w", "--noflush"];
        assert_eq!(restore_args(Some("iptables v1.8.7 (nf_tables)\n")), wait);
        assert_eq!(restore_args(Some("ip6tables v1.6.2")), wait);
        assert_eq!(restore_args(Some("iptables v1.10.0 (legacy)")), wait);
        assert_eq!(restore_args(Some("iptables v1.6.1")), ["--noflush"]);
        assert_eq!(restore_args(Some("iptables v1.4.21")), ["--noflush"]);
        assert_eq!(restore_args(Some("garbage")), ["--noflush"]);
        assert_eq!(restore_args(None), ["--noflush"]);
    }
}
