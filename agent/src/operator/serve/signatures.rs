//! Which bootstrap tokens cluster-info is signed for, followed with one watch per replica.
//!
//! A use's bootstrap token is minted when its values are asked for, and the controller
//! manager's bootstrap signer adds its `jws-kubeconfig-<id>` to kube-public/cluster-info some
//! time later (within about a second on an idle cluster, seconds under a burst). A node that
//! reads cluster-info before then finds no signature and reads it again, with backoff: under a
//! 500-join burst against the real 1.20 API server that cost about 0.5 extra reads per join
//! (and a share of its 429s). So the values answer waits, bounded by [`SIGNATURE_WAIT`], until
//! the signature is there: the node's first read then finds it, and the waiting costs the
//! cluster one watch per replica instead of a read per waiting node.
//!
//! The watch is opened with cluster-info's resourceVersion, lasts [`WATCH_SECONDS`], is
//! reopened from the last resourceVersion seen (paced by [`Rewatch`]), and starts over with a
//! read when the resourceVersion has expired. When it cannot be had (a cluster that keeps
//! cluster-info from this service's credentials, or RBAC from before this watch that allows
//! only the read), answers do not wait: no new signature could be seen.

use crate::client::http::Rewatch;
use crate::client::kube::objects::WatchEvent;
use crate::client::kube::{paths, Kube};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest a values answer waits for its token's signature.
pub const SIGNATURE_WAIT: Duration = Duration::from_secs(5);
/// How long one watch of cluster-info asks to last.
const WATCH_SECONDS: u64 = 300;
/// The prefix of the signature keys.
const JWS_PREFIX: &str = crate::trust::discovery::JWS_KEY_PREFIX;

/// The token ids cluster-info is signed for, as last seen.
pub struct Signatures {
    signed: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// Whether the last try to follow cluster-info was refused (401/403): nothing new will be
    /// seen until a later try succeeds.
    refused: AtomicBool,
}

impl Default for Signatures {
    fn default() -> Signatures {
        Signatures {
            signed: tokio::sync::watch::Sender::new(BTreeSet::new()),
            refused: AtomicBool::new(false),
        }
    }
}

/// How one read or watch of cluster-info ended.
enum Ended {
    /// Read: watched next, from its resourceVersion.
    Read,
    /// Closed, or failed: reopened from the last resourceVersion.
    Closed,
    /// The resourceVersion is no longer held: read again first.
    Expired,
    /// This service may not watch it: waited out longer.
    Refused,
}

impl Signatures {
    /// Whether `id` signs cluster-info now, or does within `limit`; at once when cluster-info
    /// cannot be followed.
    pub async fn wait_for(&self, id: &str, limit: Duration) -> bool {
        let mut seen = self.signed.subscribe();
        if self.refused.load(Ordering::Relaxed) {
            return seen.borrow().contains(id);
        }
        let signed = tokio::time::timeout(limit, seen.wait_for(|ids| ids.contains(id))).await;
        matches!(signed, Ok(Ok(_)))
    }

    /// Follows cluster-info until the process ends.
    pub async fn follow(&self, kube: &Kube) {
        let mut rv = String::new();
        let mut rewatch = Rewatch::default();
        loop {
            let opened = Instant::now();
            let ended = match rv.is_empty() {
                true => self.read(kube, &mut rv).await,
                false => self.watch(kube, &mut rv).await,
            };
            // A read proves nothing of the watch that must follow it; a watch that ran does.
            match ended {
                Ended::Refused => self.refused.store(true, Ordering::Relaxed),
                Ended::Closed | Ended::Expired => self.refused.store(false, Ordering::Relaxed),
                Ended::Read => {}
            }
            let pause = match ended {
                Ended::Read => continue,
                // Replicas refused together (the RBAC of an older release) ask again apart.
                Ended::Refused => crate::client::http::jitter(Duration::from_secs(60)),
                Ended::Expired => {
                    rv.clear();
                    rewatch.pause(opened.elapsed())
                }
                Ended::Closed => rewatch.pause(opened.elapsed()),
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads cluster-info: its signatures and resourceVersion.
    async fn read(&self, kube: &Kube, rv: &mut String) -> Ended {
        let path = paths::config_map("kube-public", "cluster-info");
        match kube.get(&path).await {
            Ok(Some(cm)) => {
                self.note(&cm);
                rv.clone_from(&resource_version(&cm));
                match rv.is_empty() {
                    true => Ended::Closed,
                    false => Ended::Read,
                }
            }
            Ok(None) => Ended::Closed,
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                tracing::warn!("cluster-info cannot be followed ({e}); values answers will not wait for their token's signature");
                Ended::Refused
            }
            Err(e) => {
                tracing::info!("reading cluster-info: {e}");
                Ended::Closed
            }
        }
    }

    /// One watch from `rv`, noting each version of cluster-info it brings.
    async fn watch(&self, kube: &Kube, rv: &mut String) -> Ended {
        let path = paths::config_map_watch("kube-public", "cluster-info", rv, WATCH_SECONDS);
        let limit = Duration::from_secs(WATCH_SECONDS + 10);
        let watched = kube
            .watch(&path, limit, |e: &WatchEvent<Value>| {
                match e.kind.as_str() {
                    "ERROR" => Some(()),
                    _ => {
                        self.note(&e.object);
                        let seen = resource_version(&e.object);
                        if !seen.is_empty() {
                            *rv = seen;
                        }
                        None
                    }
                }
            })
            .await;
        match watched {
            Ok(Some(())) => Ended::Expired,
            Ok(None) => Ended::Closed,
            Err(e) if e.status() == Some(410) => Ended::Expired,
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                tracing::warn!("cluster-info cannot be watched ({e}); values answers will not wait for their token's signature");
                Ended::Refused
            }
            Err(e) => {
                tracing::info!("the watch on cluster-info ended ({e}); watching again");
                Ended::Closed
            }
        }
    }

    /// Takes the signatures of one version of cluster-info.
    fn note(&self, cm: &Value) {
        let ids: BTreeSet<String> = cm["data"]
            .as_object()
            .map(|data| {
                data.keys()
                    .filter_map(|k| k.strip_prefix(JWS_PREFIX))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        self.signed.send_replace(ids);
    }
}

fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_waits_for_its_signature_and_no_longer_than_the_bound() {
        let s = Signatures::default();
        let t0 = Instant::now();
        assert!(!s.wait_for("abcdef", Duration::from_millis(50)).await);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let cm = serde_json::json!({"data": {"kubeconfig": "k", "jws-kubeconfig-abcdef": "sig"}});
        s.note(&cm);
        assert!(s.wait_for("abcdef", Duration::ZERO).await);
        let later = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.note(&serde_json::json!({"data": {"jws-kubeconfig-ghijkl": "sig"}}));
        };
        let (signed, ()) = tokio::join!(s.wait_for("ghijkl", Duration::from_secs(5)), later);
        assert!(signed);
        assert!(
            !s.wait_for("abcdef", Duration::ZERO).await,
            "no longer signed"
        );
    }
}
