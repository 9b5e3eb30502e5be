//! The host network as reset cleans it: iptables (and ip6tables) chains kube-proxy and CNI
//! plugins own, IPVS virtual servers, and the interfaces CNI plugins make. The real
//! implementation runs `iptables-save`, `iptables`, `ipvsadm` and `ip link`; the double records.

use super::{run_command, which, EffectError};
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
    fn tools(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("iptables-save", "iptables"),
            Family::V6 => ("ip6tables-save", "ip6tables"),
        }
    }

    /// The tool's name.
    pub fn tool(self) -> &'static str {
        self.tools().1
    }
}

/// What reset changes in the host's network.
pub trait Network: Send + Sync {
    /// `iptables-save` of this family; None when the tool is missing or fails.
    fn save(&self, family: Family) -> Option<String>;
    /// One `iptables` command of this family.
    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError>;
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

/// `iptables` arguments with `-w` first: iptables-legacy fails at once ("Another app is
/// currently holding the xtables lock", exit 4) while kube-proxy, a CNI agent, firewalld or
/// docker changes the rules; with `-w` it waits for the lock (within [`TIMEOUT`]).
/// iptables-nft accepts `-w` and has no lock.
fn iptables_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    all
}

impl Network for HostNetwork {
    fn save(&self, family: Family) -> Option<String> {
        let (save, _) = family.tools();
        which(save)?;
        run_command(save, &[], Duration::from_secs(60)).ok()
    }

    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError> {
        run_command(family.tool(), &iptables_args(args), TIMEOUT).map(drop)
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

/// A network that serves canned `iptables-save` dumps and records every command.
#[derive(Default)]
pub struct RecordingNetwork {
    /// The iptables-save dump to serve (IPv4).
    pub dump_v4: Option<String>,
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
        match family {
            Family::V4 => self.dump_v4.clone(),
            Family::V6 => None,
        }
    }
    fn iptables(&self, family: Family, args: &[&str]) -> Result<(), EffectError> {
        self.note(format!("{} {}", family.tool(), args.join(" ")));
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
}
