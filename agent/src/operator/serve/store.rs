//! Openapi tokens, kept in the cluster as Secrets so the service holds no state of its own:
//! any number of replicas serve the same tokens, and a restart loses nothing.
//!
//! Secret `node-attach-openapi-<first 20 hex of sha256(token)>` in the service's namespace,
//! labelled `app.kubernetes.io/managed-by=node-attach`, holds the SHA-256 of the token (never the
//! token), the cluster values template, the expiry and the number of uses allowed. It is never
//! written again after `token create`.
//!
//! **Uses are slots, taken by creating them.** Use number `n` (0 ≤ n < uses allowed) is the
//! Secret `node-attach-use-<20 hex>-<n>`, created when a node takes it (the bootstrap token id
//! minted for it, the instance, the time; later the node it became). A create either makes the
//! Secret or answers 409, so two replicas never hand out the same slot and never more uses than
//! allowed, and no use ever rewrites a shared object: a burst of 1000 joins through one token is
//! 1000 creates of 1000 different Secrets, not 1000 optimistic-concurrency updates of one (which
//! on a 300-join burst cost 1294 conflicts). Each replica learns the slots taken with one list
//! per token, then picks free slots at random (so replicas rarely meet on one) and treats a 409
//! as "taken meanwhile". The slots name their token Secret as owner: deleting the token deletes
//! its uses. The values of a use carry a callback URL naming its slot, so a node's reports read
//! that one slot by name ([`Store::use_at`]) rather than listing the token's slots by label (a
//! list filters the whole namespace, and under a 500-join burst the real API server answered
//! such lists 500).

use crate::client::kube::{Kube, KubeError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Label on every Secret the service owns.
pub const OWNER_LABEL: &str = "app.kubernetes.io/managed-by";

/// The hex SHA-256 of an openapi token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Secret name for a token.
pub fn secret_name(hash: &str) -> String {
    format!("node-attach-openapi-{}", &hash[..20])
}

/// One recorded use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Use {
    /// The bootstrap token id minted for this use.
    pub bootstrap_id: String,
    /// The instance id the node gave, if any.
    pub instance: String,
    /// When (Unix seconds).
    pub at: i64,
    /// The node it became, once it reported back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A stored openapi token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// SHA-256 of the token.
    pub hash: String,
    /// The values template (JSON, `node-attach.io/v1`), without a bootstrap token.
    pub values: Value,
    /// Expiry (Unix seconds); 0 never.
    pub expires: i64,
    /// Uses allowed in all (the slots `0..uses`); stored as `uses_left`, its name before uses
    /// were slots.
    #[serde(rename = "uses_left")]
    pub uses: u32,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// A use taken: its slot number and the token's record.
#[derive(Clone, Debug)]
pub struct Taken {
    /// The record of the token.
    pub record: Record,
    /// The slot (0-based: the use's number less one).
    pub slot: u32,
    /// Slots this replica knows to be free after this one (a lower bound of the uses left
    /// when other replicas serve the token too).
    pub free: u32,
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unknown token.
    #[error("unknown openapi token")]
    Unknown,
    /// Expired.
    #[error("the openapi token has expired")]
    Expired,
    /// No uses left.
    #[error("the openapi token has been used up")]
    UsedUp,
    /// API failure.
    #[error(transparent)]
    Api(#[from] KubeError),
    /// Too many slots were taken by other replicas while this one tried them.
    #[error("too many concurrent uses of one token")]
    Contended,
    /// A stored record does not parse.
    #[error("the stored record {0} is damaged")]
    Damaged(String),
}

/// Label on the slot Secrets naming their token (the first 20 hex of its SHA-256).
const TOKEN_LABEL: &str = "node-attach.io/openapi-token";
/// Label on a slot Secret naming the bootstrap token id minted for it.
const BOOTSTRAP_LABEL: &str = "node-attach.io/bootstrap-id";
/// Label on a slot Secret naming (the first 20 hex of the SHA-256 of) the node it became.
const NODE_LABEL: &str = "node-attach.io/node";
/// Creates tried for one use before giving up (each 409 means another replica took that slot
/// just now; the local view is updated, so this bounds only a storm of replicas).
const TRIES: usize = 16;

/// What this replica knows of each token's slots: taken (by anyone, as far as it knows) or
/// being taken by it now. Learned from one list per token; kept for the life of the process.
#[derive(Default)]
pub struct Slots {
    tokens: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<View>>>>,
}

#[derive(Default)]
struct View {
    listed: bool,
    taken: std::collections::BTreeSet<u32>,
}

impl Slots {
    fn view(&self, short: &str) -> Arc<tokio::sync::Mutex<View>> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.entry(short.to_owned()).or_default().clone()
    }
}

/// The store, in one namespace.
pub struct Store<'a> {
    /// Admin client.
    pub kube: &'a Kube,
    /// Namespace.
    pub namespace: String,
    /// This replica's view of the slots.
    pub slots: &'a Slots,
}

fn short_hash(hash: &str) -> &str {
    &hash[..20]
}

/// The Secret of use `slot` of the token whose SHA-256 is `hash`.
fn slot_name(hash: &str, slot: u32) -> String {
    format!("node-attach-use-{}-{slot}", short_hash(hash))
}

/// A random index below `n` (n > 0).
fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % n as u64) as usize
}

impl Store<'_> {
    fn path(&self, name: &str) -> String {
        format!("/api/v1/namespaces/{}/secrets/{name}", self.namespace)
    }

    fn secrets(&self) -> String {
        format!("/api/v1/namespaces/{}/secrets", self.namespace)
    }

    /// Saves a new token's record.
    pub async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret_name(&record.hash), "namespace": self.namespace,
                         "labels": {OWNER_LABEL: "node-attach", "node-attach.io/kind": "openapi-token"}},
            "type": "Opaque",
            "data": {"record": STANDARD.encode(serde_json::to_vec(record).unwrap_or_default())},
        });
        self.kube.post(&self.secrets(), &body).await?;
        Ok(())
    }

    /// Loads the record for a presented token (the hash compared in constant time) with the
    /// uid of its Secret.
    pub async fn load(&self, token: &str) -> Result<(Record, String), StoreError> {
        let hash = token_hash(token);
        let name = secret_name(&hash);
        let obj = self
            .kube
            .get(&self.path(&name))
            .await?
            .ok_or(StoreError::Unknown)?;
        let record: Record = obj["data"]["record"]
            .as_str()
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| StoreError::Damaged(name.clone()))?;
        if !bool::from(record.hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(StoreError::Unknown);
        }
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((record, uid))
    }

    /// The slot Secrets of a token matching `extra` labels (`k=v,…`, may be empty).
    async fn list_uses(&self, hash: &str, extra: &str) -> Result<Vec<(u32, Use)>, StoreError> {
        let mut selector = format!("{TOKEN_LABEL}={}", short_hash(hash));
        if !extra.is_empty() {
            selector.push(',');
            selector.push_str(extra);
        }
        let path = format!("{}?labelSelector={}", self.secrets(), url_escape(&selector));
        let list = self.kube.get(&path).await?.unwrap_or(Value::Null);
        let prefix = format!("node-attach-use-{}-", short_hash(hash));
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .iter()
            .filter_map(|s| {
                let name = s["metadata"]["name"].as_str()?;
                let slot = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((slot, decode_use(s)?))
            })
            .collect())
    }

    /// Takes one use of a token: checks expiry, then creates a free slot Secret recording
    /// the use (see the module's description).
    pub async fn take_use(
        &self,
        token: &str,
        bootstrap_id: &str,
        instance: &str,
        now: i64,
    ) -> Result<Taken, StoreError> {
        let (record, uid) = self.load(token).await?;
        if record.expires != 0 && record.expires <= now {
            return Err(StoreError::Expired);
        }
        let used = Use {
            bootstrap_id: bootstrap_id.to_owned(),
            instance: instance.to_owned(),
            at: now,
            node: None,
        };
        let view = self.slots.view(short_hash(&record.hash));
        let mut relisted = false;
        for _ in 0..TRIES {
            let (slot, free) = match self.pick(&record, &view).await? {
                Some(picked) => picked,
                // Everything this replica knows of is taken: uses given back elsewhere may
                // have freed some, so look once more before saying so.
                None if !relisted => {
                    relisted = true;
                    view.lock().await.listed = false;
                    continue;
                }
                None => return Err(StoreError::UsedUp),
            };
            match self.create_slot(&record, &uid, slot, &used).await {
                Ok(true) => return Ok(Taken { record, slot, free }),
                Ok(false) => {}
                Err(e) => {
                    view.lock().await.taken.remove(&slot);
                    return Err(e);
                }
            }
        }
        Err(StoreError::Contended)
    }

    /// A free slot, marked taken in this replica's view (listing the token's slots first when
    /// this replica has not yet), and how many stay free.
    async fn pick(
        &self,
        record: &Record,
        view: &tokio::sync::Mutex<View>,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        let mut v = view.lock().await;
        if !v.listed {
            let taken = self.list_uses(&record.hash, "").await?;
            v.taken = taken.into_iter().map(|(slot, _)| slot).collect();
            v.listed = true;
        }
        let free = record.uses.saturating_sub(v.taken.len() as u32);
        if free == 0 {
            return Ok(None);
        }
        // The k-th free slot, k at random.
        let k = random_below(free as usize);
        let slot = (0..record.uses)
            .filter(|n| !v.taken.contains(n))
            .nth(k)
            .unwrap_or_default();
        v.taken.insert(slot);
        Ok(Some((slot, free - 1)))
    }

    /// Creates the slot Secret; `Ok(false)` when another replica holds that slot (a 409 for a
    /// slot that is not ours: an earlier attempt of this very create that reached the server
    /// before its answer was lost is ours).
    async fn create_slot(
        &self,
        record: &Record,
        uid: &str,
        slot: u32,
        used: &Use,
    ) -> Result<bool, StoreError> {
        let name = slot_name(&record.hash, slot);
        let mut metadata = json!({
            "name": name, "namespace": self.namespace,
            "labels": {OWNER_LABEL: "node-attach", "node-attach.io/kind": "openapi-use",
                       TOKEN_LABEL: short_hash(&record.hash), BOOTSTRAP_LABEL: used.bootstrap_id},
        });
        if !uid.is_empty() {
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Secret", "name": secret_name(&record.hash), "uid": uid,
            }]);
        }
        let body = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": {"use": STANDARD.encode(serde_json::to_vec(used).unwrap_or_default())},
        });
        match self.kube.post(&self.secrets(), &body).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => {
                let existing = self.kube.get(&self.path(&name)).await?;
                let mine = existing
                    .as_ref()
                    .and_then(decode_use)
                    .is_some_and(|u| u.bootstrap_id == used.bootstrap_id);
                Ok(mine)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The use that minted `bootstrap_id` under this token, with its slot.
    pub async fn use_of(
        &self,
        token: &str,
        bootstrap_id: &str,
    ) -> Result<Option<(u32, Use)>, StoreError> {
        if crate::sources::values::check_identifier("bootstrap token id", bootstrap_id).is_err() {
            return Ok(None);
        }
        let found = self
            .list_uses(
                &token_hash(token),
                &format!("{BOOTSTRAP_LABEL}={bootstrap_id}"),
            )
            .await?;
        Ok(found
            .into_iter()
            .find(|(_, u)| u.bootstrap_id == bootstrap_id))
    }

    /// The use in slot `slot` of this token, with its slot (one read by name); None when that
    /// slot is free.
    pub async fn use_at(&self, token: &str, slot: u32) -> Result<Option<(u32, Use)>, StoreError> {
        let name = slot_name(&token_hash(token), slot);
        let secret = self.kube.get(&self.path(&name)).await?;
        Ok(secret.as_ref().and_then(decode_use).map(|u| (slot, u)))
    }

    /// The uses of this token that have not reported a node yet, with their slots.
    pub async fn unreported_uses(&self, token: &str) -> Result<Vec<(u32, Use)>, StoreError> {
        let all = self.list_uses(&token_hash(token), "").await?;
        Ok(all.into_iter().filter(|(_, u)| u.node.is_none()).collect())
    }

    /// Whether a use of this token became `node`: the use in `slot` when the report names it
    /// (one read), else any (a list by the node's label).
    pub async fn became(
        &self,
        token: &str,
        node: &str,
        slot: Option<u32>,
    ) -> Result<bool, StoreError> {
        let found = match slot {
            Some(slot) => self.use_at(token, slot).await?.into_iter().collect(),
            None => {
                let selector = format!("{NODE_LABEL}={}", short_hash(&token_hash(node)));
                self.list_uses(&token_hash(token), &selector).await?
            }
        };
        Ok(found.iter().any(|(_, u)| u.node.as_deref() == Some(node)))
    }

    /// Remembers which node the use in `slot` (as read: `found`) became (only that node's
    /// report writes its slot, so no update contends).
    pub async fn record_node(
        &self,
        token: &str,
        slot: u32,
        mut found: Use,
        node: &str,
    ) -> Result<(), StoreError> {
        if found.node.as_deref() == Some(node) {
            return Ok(());
        }
        found.node = Some(node.to_owned());
        let patch = json!({
            "metadata": {"labels": {NODE_LABEL: short_hash(&token_hash(node))}},
            "data": {"use": STANDARD.encode(serde_json::to_vec(&found).unwrap_or_default())},
        });
        let name = slot_name(&token_hash(token), slot);
        self.kube.merge_patch(&self.path(&name), &patch).await?;
        Ok(())
    }

    /// Gives back the use that was to mint `bootstrap_id` (its bootstrap token could not be
    /// created, so nobody can join with it): its slot deleted, free again.
    pub async fn give_back(
        &self,
        token: &str,
        bootstrap_id: &str,
        slot: u32,
    ) -> Result<(), StoreError> {
        let hash = token_hash(token);
        let name = slot_name(&hash, slot);
        let existing = self.kube.get(&self.path(&name)).await?;
        let ours = existing
            .as_ref()
            .and_then(decode_use)
            .is_some_and(|u| u.bootstrap_id == bootstrap_id);
        if ours {
            self.kube.delete(&self.path(&name)).await?;
            let view = self.slots.view(short_hash(&hash));
            view.lock().await.taken.remove(&slot);
        }
        Ok(())
    }
}

/// The use a slot Secret records.
fn decode_use(secret: &Value) -> Option<Use> {
    let b = STANDARD.decode(secret["data"]["use"].as_str()?).ok()?;
    serde_json::from_slice(&b).ok()
}

/// A label selector as a query value (`=` and `,` escaped).
fn url_escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace('/', "%2F")
}
