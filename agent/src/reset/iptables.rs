//! The iptables chains kube-proxy and CNI plugins own ([`CHAIN_PREFIXES`]), removed with the
//! rules in other chains that jump into them: read from `iptables-save`, then, per family, one
//! `iptables-restore --noflush` batch (for each table: `-D` of each jump, exactly as
//! iptables-save printed it; `-F` then `-X` of each owned chain; `COMMIT`). One `iptables` call
//! per rule or chain reloads the whole table each time: quadratic, hours on a node of a large
//! cluster (kube-proxy's iptables mode makes a few chains a Service). If the batch fails (an
//! iptables-restore without `--noflush`, a rule changed since the dump, a rule that does not
//! read back as it was printed), the rules are read again, the jumps (a handful) removed one
//! command at a time, and the chains flushed and deleted in a second batch; if that fails too,
//! one command at a time, as before batches.

use super::{Ctx, Outcome};
use crate::effects::network::{Family, Network};

/// iptables chain prefixes kube-proxy and CNI plugins own.
pub const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-", "FLANNEL-", "cali-", "CILIUM_"];

/// How many chain names a step shows (a node of a large cluster has tens of thousands).
const SHOWN_NAMES: usize = 20;

/// A chain, as (table, chain name).
pub type Chain = (String, String);

/// A rule in a chain reset keeps (built-in or foreign) that jumps into an owned chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// Its table.
    pub table: String,
    /// The rule as iptables-save printed it, after `-A ` (quotes and all): what a batch's `-D`
    /// repeats, since iptables-restore reads it with the same quoting.
    pub spec: String,
    /// Its arguments, unquoted: what one `iptables -D` takes.
    pub words: Vec<String>,
    /// The owned chain it jumps to.
    pub target: String,
}

/// What reset removes from one family's tables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// The owned chains, in the dump's order.
    pub chains: Vec<Chain>,
    /// The jumps into them from other chains, in the dump's order.
    pub jumps: Vec<Jump>,
}

fn is_owned(chain: &str) -> bool {
    CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// The chains kube-proxy and CNI plugins own in an `iptables-save` dump, and the rules in
/// other chains that jump (`-j`) or go (`-g`) into them.
pub fn owned_chains(dump: &str) -> Owned {
    let mut table = String::new();
    let mut owned = Owned::default();
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or_default();
            if is_owned(name) {
                owned.chains.push((table.clone(), name.to_owned()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let words = save_words(rule);
            let target = words
                .iter()
                .position(|w| w == "-j" || w == "-g")
                .and_then(|i| words.get(i + 1));
            let chain = words.first().map(String::as_str).unwrap_or_default();
            let Some(target) = target.filter(|t| is_owned(t) && !is_owned(chain)).cloned() else {
                continue;
            };
            owned.jumps.push(Jump {
                table: table.clone(),
                spec: rule.trim_end().to_owned(),
                words,
                target,
            });
        }
    }
    owned
}

/// The `iptables-restore --noflush` input that removes `owned`: for each table (in the dump's
/// order), the jumps into owned chains deleted first, then every owned chain flushed, then every
/// one deleted (flushed all before any is deleted, so no owned chain still refers to another),
/// then `COMMIT`. Tables with nothing owned are not named, so they stay untouched.
pub fn restore_batch(owned: &Owned) -> String {
    batch_text(&owned.jumps, &owned.chains, &owned.chains)
}

/// A batch deleting `jumps`, flushing `flush`, deleting `delete`, table by table.
fn batch_text(jumps: &[Jump], flush: &[Chain], delete: &[Chain]) -> String {
    let mut tables: Vec<&str> = Vec::new();
    // Chains first: a table's chains come before its rules in the dump.
    let chains = flush.iter().chain(delete).map(|(t, _)| t);
    let named = chains.chain(jumps.iter().map(|j| &j.table));
    for t in named {
        if !tables.contains(&t.as_str()) {
            tables.push(t);
        }
    }
    let mut batch = String::new();
    for table in tables {
        batch.push_str(&format!("*{table}\n"));
        for jump in jumps.iter().filter(|j| j.table == table) {
            batch.push_str(&format!("-D {}\n", jump.spec));
        }
        for (_, chain) in flush.iter().filter(|(t, _)| t == table) {
            batch.push_str(&format!("-F {chain}\n"));
        }
        for (_, chain) in delete.iter().filter(|(t, _)| t == table) {
            batch.push_str(&format!("-X {chain}\n"));
        }
        batch.push_str("COMMIT\n");
    }
    batch
}

/// Removes the owned chains of one family from its `iptables-save` dump, as one step.
pub fn clean_family(ctx: &mut Ctx<'_>, family: Family, dump: &str) {
    let owned = owned_chains(dump);
    if owned.chains.is_empty() {
        return;
    }
    let summary = format!(
        "{}: {} chains ({})",
        family.tool(),
        owned.chains.len(),
        shown(owned.chains.iter().map(|(_, c)| c.as_str()))
    );
    let jumps = format!("{} jumps into them from other chains", owned.jumps.len());
    if ctx.opts.dry_run {
        ctx.step("iptables", summary, Outcome::WouldDo, jumps);
        return;
    }
    let net = ctx.fx.network.as_ref();
    let tool = family.restore_tool();
    let (outcome, detail) = match net.restore(family, &restore_batch(&owned)) {
        Ok(()) => (Outcome::Done, format!("and {jumps}, in one {tool} batch")),
        Err(e) => {
            tracing::warn!("iptables cleanup batch failed, trying another way: {e}");
            let (left, how) = fall_back(net, family, owned);
            let how = format!("the {tool} batch failed ({e}), so {how}");
            if left.is_empty() {
                (Outcome::Done, format!("and {jumps}; {how}"))
            } else {
                let names = shown(left.iter().map(String::as_str));
                (Outcome::Failed, format!("{how}; could not delete {names}"))
            }
        }
    };
    ctx.step("iptables", summary, outcome, detail);
}

/// After a failed batch: the rules read again (a rule may have changed, and iptables-legacy
/// commits table by table, so the batch may have done part of its work); the jumps removed one
/// command at a time, so one that will not go holds back only the chain it jumps to; the rules
/// read again, and the chains flushed and deleted in a second batch, or one command at a time
/// if that fails too. Returns the chains left (each with why, when known) and how it went.
fn fall_back(net: &dyn Network, family: Family, owned: Owned) -> (Vec<String>, &'static str) {
    let now = read_again(net, family, owned);
    for jump in &now.jumps {
        let mut args = vec!["-t", jump.table.as_str(), "-D"];
        args.extend(jump.words.iter().map(String::as_str));
        if let Err(e) = net.iptables(family, &args) {
            tracing::warn!("removing a jump into a kube-proxy/CNI chain: {e}");
        }
    }
    let now = read_again(net, family, now);
    // A jump still there holds the chain it jumps to: flushed, not deleted.
    let held = |(t, c): &Chain| now.jumps.iter().any(|j| &j.table == t && &j.target == c);
    let mut left: Vec<String> = (now.chains.iter().filter(|c| held(c)))
        .map(|(_, c)| format!("{c} (a jump into it would not go)"))
        .collect();
    let delete: Vec<Chain> = now.chains.iter().filter(|c| !held(c)).cloned().collect();
    if now.chains.is_empty() {
        return (left, "the jumps went one command at a time");
    }
    match net.restore(family, &batch_text(&[], &now.chains, &delete)) {
        Ok(()) => {
            let how = "the jumps went one command at a time and the chains in a second batch";
            (left, how)
        }
        Err(e) => {
            tracing::warn!("iptables cleanup batch of the chains alone failed: {e}");
            for (t, c) in &now.chains {
                if let Err(e) = net.iptables(family, &["-t", t, "-F", c]) {
                    tracing::warn!("flushing {c}: {e}");
                }
            }
            let undeleted = (delete.iter())
                .filter(|(t, c)| net.iptables(family, &["-t", t, "-X", c]).is_err())
                .map(|(_, c)| c.clone());
            left.extend(undeleted);
            let how = "one command at a time (a second batch, of the chains alone, failed too)";
            (left, how)
        }
    }
}

/// The owned chains as `iptables-save` shows them now, or `before` if it cannot be read.
fn read_again(net: &dyn Network, family: Family, before: Owned) -> Owned {
    net.save(family).map_or(before, |d| owned_chains(&d))
}

/// The first [`SHOWN_NAMES`] names, and how many more there are.
fn shown<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let first: Vec<&str> = names.take(SHOWN_NAMES).collect();
    match total - first.len() {
        0 => first.join(", "),
        more => format!("{}, and {more} more", first.join(", ")),
    }
}

/// The arguments of one `iptables-save` rule line, as iptables quotes them: a word with spaces is
/// in double quotes (the kubelet's `-m comment --comment "kubernetes postrouting rules"`), with
/// `\"` and `\\` escaped inside. Splitting on whitespace instead breaks such a rule, its `-D`
/// matches nothing, and the chain it jumps to cannot be deleted.
pub fn save_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut quoted = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy (iptables mode), the bridge and portmap CNI plugins, Calico and Docker on one
    /// node, with a user's rules among them.
    const SAMPLE: &str = include_str!("../../tests/fixtures/iptables/save-v4.txt");
    const SAMPLE_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/iptables/save-v4.txt"
    );

    /// What the batch for [`SAMPLE`] must be: per table, the jumps from built-in and foreign
    /// chains deleted as iptables-save printed them, then the owned chains flushed, then
    /// deleted. DOCKER, the user's rules and the security table are never named.
    const SAMPLE_BATCH: &str = r#"*raw
-D PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
-D OUTPUT -m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT
-F cali-OUTPUT
-F cali-PREROUTING
-X cali-OUTPUT
-X cali-PREROUTING
COMMIT
*mangle
-F KUBE-IPTABLES-HINT
-F KUBE-KUBELET-CANARY
-F KUBE-PROXY-CANARY
-X KUBE-IPTABLES-HINT
-X KUBE-KUBELET-CANARY
-X KUBE-PROXY-CANARY
COMMIT
*filter
-D INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT
-D INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-D INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-D INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-D INPUT -j KUBE-FIREWALL
-D FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-D FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-D FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-D FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-D OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-D OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D OUTPUT -j KUBE-FIREWALL
-F KUBE-EXTERNAL-SERVICES
-F KUBE-FIREWALL
-F KUBE-FORWARD
-F KUBE-KUBELET-CANARY
-F KUBE-NODEPORTS
-F KUBE-PROXY-CANARY
-F KUBE-PROXY-FIREWALL
-F KUBE-SERVICES
-F cali-FORWARD
-F cali-INPUT
-F cali-from-hep-forward
-X KUBE-EXTERNAL-SERVICES
-X KUBE-FIREWALL
-X KUBE-FORWARD
-X KUBE-KUBELET-CANARY
-X KUBE-NODEPORTS
-X KUBE-PROXY-CANARY
-X KUBE-PROXY-FIREWALL
-X KUBE-SERVICES
-X cali-FORWARD
-X cali-INPUT
-X cali-from-hep-forward
COMMIT
*nat
-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-D POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-D POSTROUTING -s 10.244.0.12/32 -m comment --comment "name: \"cbr0\" id: \"4f1e2d3c\"" -j CNI-3f6a1c2b9d8e7f6a5b4c3d2e
-F CNI-3f6a1c2b9d8e7f6a5b4c3d2e
-F CNI-HOSTPORT-DNAT
-F CNI-HOSTPORT-MASQ
-F CNI-HOSTPORT-SETMARK
-F KUBE-KUBELET-CANARY
-F KUBE-MARK-MASQ
-F KUBE-NODEPORTS
-F KUBE-POSTROUTING
-F KUBE-SEP-IT2ZTR26TO4XFPTO
-F KUBE-SEP-N4G2XR5TDX7PQE7P
-F KUBE-SERVICES
-F KUBE-SVC-ERIFXISQEP7F7OF4
-F KUBE-SVC-NPX46M4PTMTKRN6Y
-X CNI-3f6a1c2b9d8e7f6a5b4c3d2e
-X CNI-HOSTPORT-DNAT
-X CNI-HOSTPORT-MASQ
-X CNI-HOSTPORT-SETMARK
-X KUBE-KUBELET-CANARY
-X KUBE-MARK-MASQ
-X KUBE-NODEPORTS
-X KUBE-POSTROUTING
-X KUBE-SEP-IT2ZTR26TO4XFPTO
-X KUBE-SEP-N4G2XR5TDX7PQE7P
-X KUBE-SERVICES
-X KUBE-SVC-ERIFXISQEP7F7OF4
-X KUBE-SVC-NPX46M4PTMTKRN6Y
COMMIT
"#;

    #[test]
    fn the_batch_removes_owned_chains_and_the_jumps_into_them_only() {
        let owned = owned_chains(SAMPLE);
        let batch = restore_batch(&owned);
        assert_eq!(batch, SAMPLE_BATCH);
        // Each -D is a rule of the dump, word for word.
        for line in batch.lines().filter_map(|l| l.strip_prefix("-D ")) {
            assert!(SAMPLE.lines().any(|s| s == format!("-A {line}")), "{line}");
        }
        // One-at-a-time takes the same rules, unquoted.
        let cbr0 = owned
            .jumps
            .iter()
            .find(|j| j.spec.contains("cbr0"))
            .expect("cbr0");
        assert_eq!(cbr0.words[6], r#"name: "cbr0" id: "4f1e2d3c""#);
    }

    #[test]
    fn a_dump_with_nothing_owned_makes_an_empty_batch() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n-A INPUT -j DOCKER\nCOMMIT\n";
        let owned = owned_chains(dump);
        assert_eq!(owned, Owned::default());
        assert_eq!(restore_batch(&owned), "");
    }

    #[test]
    fn a_goto_into_an_owned_chain_is_a_jump() {
        let dump = "*filter\n:FORWARD ACCEPT [0:0]\n:cali-FORWARD - [0:0]\n\
                    -A FORWARD -g cali-FORWARD\nCOMMIT\n";
        let batch = restore_batch(&owned_chains(dump));
        assert_eq!(
            batch,
            "*filter\n-D FORWARD -g cali-FORWARD\n-F cali-FORWARD\n-X cali-FORWARD\nCOMMIT\n"
        );
    }

    #[test]
    fn names_shown_are_capped() {
        let names: Vec<String> = (0..25).map(|i| format!("KUBE-SEP-{i}")).collect();
        let shown = shown(names.iter().map(String::as_str));
        assert!(shown.starts_with("KUBE-SEP-0, KUBE-SEP-1,"), "{shown}");
        assert!(shown.ends_with("KUBE-SEP-19, and 5 more"), "{shown}");
        assert_eq!(super::shown(["A", "B"].into_iter()), "A, B");
    }

    /// The batch against real iptables, legacy and nft, in a scratch network namespace: the
    /// sample loaded, the batch applied with `--noflush`, and exactly the foreign rules left.
    /// Skipped (and says so) unless root with `unshare` and iptables-restore.
    #[test]
    fn the_batch_applies_to_real_iptables_in_a_scratch_namespace() {
        use crate::effects::{run_command, run_command_input, which};
        use std::time::Duration;
        let timeout = Duration::from_secs(60);
        if run_command("unshare", &["-n", "true"], timeout).is_err() {
            eprintln!("skipped: cannot make a network namespace (unshare -n, root)");
            return;
        }
        let foreign: Vec<&str> = {
            let owned = owned_chains(SAMPLE);
            let mut keep: Vec<&str> = SAMPLE
                .lines()
                .filter(|l| l.starts_with("-A "))
                .filter(|l| !owned.jumps.iter().any(|j| l[3..] == j.spec))
                .filter(|l| !is_owned(l[3..].split(' ').next().unwrap_or_default()))
                .collect();
            keep.sort_unstable();
            keep
        };
        let batch = restore_batch(&owned_chains(SAMPLE));
        let mut ran = 0;
        for tool in ["iptables-legacy", "iptables-nft"] {
            if which(&format!("{tool}-restore")).is_none() {
                continue;
            }
            let version = run_command(tool, &["--version"], timeout).ok();
            let args = crate::effects::network::restore_args(version.as_deref()).join(" ");
            // The sample from its file; the batch (on standard input) applied, then applied
            // again, which must fail: the rules it deletes are gone, as when a rule changed
            // since the dump, and that failure is what the one-at-a-time path takes over from.
            let script = format!(
                "{tool}-restore < {SAMPLE_PATH} || exit 99; batch=$(cat); \
                 printf '%s\\n' \"$batch\" | {tool}-restore {args} || exit 98; \
                 printf '%s\\n' \"$batch\" | {tool}-restore {args} 2>/dev/null && exit 97; \
                 {tool}-save"
            );
            let out = run_command_input(
                "unshare",
                &["-n", "sh", "-c", &script],
                batch.clone().into_bytes(),
                timeout,
            );
            let out = match out {
                Err(e) if e.detail.starts_with("exit status 99") => {
                    eprintln!("skipped {tool}: the sample does not load here ({e})");
                    continue;
                }
                other => other.expect("the batch applies"),
            };
            let mut left: Vec<&str> = out.lines().filter(|l| l.starts_with("-A ")).collect();
            left.sort_unstable();
            assert_eq!(left, foreign, "{tool}");
            let chains: Vec<&str> = out.lines().filter(|l| l.starts_with(':')).collect();
            assert!(chains.iter().any(|c| c.starts_with(":DOCKER ")), "{tool}");
            assert!(
                !chains.iter().any(|c| is_owned(&c[1..])),
                "{tool}: {chains:?}"
            );
            ran += 1;
        }
        if ran == 0 {
            eprintln!("skipped: neither iptables-legacy-restore nor iptables-nft-restore");
        }
    }
}
