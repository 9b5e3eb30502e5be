//! Openapi tokens, kept in the cluster as Secrets so the service holds no state of its own:
//! any number of replicas serve the same tokens, and a restart loses nothing.
//!
//! Secret `node-attach-openapi-<first 20 hex of sha256(token)>` in the service's namespace,
//! labelled `app.kubernetes.io/managed-by=node-attach`, holds the SHA-256 of the token (never the
//! token), the cluster values template, the expiry, the uses left, and one entry per use (the
//! bootstrap token id minted for it, and the instance). Uses are counted with the API server's
//! optimistic concurrency (an update with a stale resourceVersion is retried), so two replicas
//! never hand out more uses than allowed.

use crate::client::kube::{Kube, KubeError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
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
    /// Uses left.
    pub uses_left: u32,
    /// Uses so far.
    pub uses: Vec<Use>,
    /// Description.
    #[serde(default)]
    pub description: String,
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
    /// Too many concurrent updates of one token's record (each retried on a stale
    /// resourceVersion).
    #[error("too many concurrent updates of one token")]
    Contended,
    /// A stored record does not parse.
    #[error("the stored record {0} is damaged")]
    Damaged(String),
}

/// The store, in one namespace.
pub struct Store<'a> {
    /// Admin client.
    pub kube: &'a Kube,
    /// Namespace.
    pub namespace: String,
}

impl Store<'_> {
    fn path(&self, name: &str) -> String {
        format!("/api/v1/namespaces/{}/secrets/{name}", self.namespace)
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
        self.kube
            .post(
                &format!("/api/v1/namespaces/{}/secrets", self.namespace),
                &body,
            )
            .await?;
        Ok(())
    }

    /// Loads the record for a presented token (the hash compared in constant time) with its
    /// resourceVersion.
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
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((record, rv))
    }

    /// Writes a record back if nobody changed it meanwhile; `Ok(false)` on a conflict.
    pub async fn update(&self, record: &Record, rv: &str) -> Result<bool, StoreError> {
        let body = json!({
            "metadata": {"resourceVersion": rv},
            "data": {"record": STANDARD.encode(serde_json::to_vec(record).unwrap_or_default())},
        });
        match self
            .kube
            .merge_patch(&self.path(&secret_name(&record.hash)), &body)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes one use of a token: checks expiry and uses left, records the use. Retries on
    /// concurrent updates.
    pub async fn take_use(
        &self,
        token: &str,
        bootstrap_id: &str,
        instance: &str,
        now: i64,
    ) -> Result<Record, StoreError> {
        for _ in 0..10 {
            let (mut record, rv) = self.load(token).await?;
            if record.expires != 0 && record.expires <= now {
                return Err(StoreError::Expired);
            }
            if record.uses_left == 0 {
                return Err(StoreError::UsedUp);
            }
            record.uses_left -= 1;
            record.uses.push(Use {
                bootstrap_id: bootstrap_id.to_owned(),
                instance: instance.to_owned(),
                at: now,
                node: None,
            });
            if self.update(&record, &rv).await? {
                return Ok(record);
            }
        }
        Err(StoreError::Contended)
    }

    /// Remembers which node the use that minted `bootstrap_id` became. Retries on concurrent
    /// updates.
    pub async fn record_node(
        &self,
        token: &str,
        bootstrap_id: &str,
        node: &str,
    ) -> Result<(), StoreError> {
        for _ in 0..10 {
            let (mut record, rv) = self.load(token).await?;
            let Some(found) = record
                .uses
                .iter_mut()
                .find(|u| u.bootstrap_id == bootstrap_id)
            else {
                return Ok(());
            };
            if found.node.as_deref() == Some(node) {
                return Ok(());
            }
            found.node = Some(node.to_owned());
            if self.update(&record, &rv).await? {
                return Ok(());
            }
        }
        Err(StoreError::Contended)
    }

    /// Gives back the use that was to mint `bootstrap_id` (its bootstrap token could not be
    /// created, so nobody can join with it): the entry removed, the use counted again. Retries
    /// on concurrent updates.
    pub async fn give_back(&self, token: &str, bootstrap_id: &str) -> Result<(), StoreError> {
        for _ in 0..10 {
            let (mut record, rv) = self.load(token).await?;
            let before = record.uses.len();
            record.uses.retain(|u| u.bootstrap_id != bootstrap_id);
            if record.uses.len() == before {
                return Ok(());
            }
            record.uses_left += 1;
            if self.update(&record, &rv).await? {
                return Ok(());
            }
        }
        Err(StoreError::Api(KubeError::Setup(
            "too many concurrent updates of one token".into(),
        )))
    }
}
