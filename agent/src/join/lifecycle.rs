//! The end of a join on an autoscaled instance: the ESS lifecycle action that holds it is
//! completed, `CONTINUE` when the node joined and `ABANDON` when it did not, so a broken
//! instance is released and replaced now instead of being counted as in service
//! ([`crate::client::ess`]). Never fatal: when the action cannot be completed, the hook's
//! timeout applies its default result, as it would without node-attach.

use crate::client::ess::{EssApi, Lifecycle, LifecycleAction, LifecycleResult};
use crate::sources::metadata::aliyun;
use crate::sources::settings::Settings;

/// Completes the lifecycle action the settings name, if any.
pub async fn complete(settings: &Settings, joined: bool) -> Option<LifecycleResult> {
    let ess = settings.ess_lifecycle.as_ref()?;
    let Some(region) = settings.region.as_deref() else {
        tracing::warn!("cannot complete the ESS lifecycle action: the region is unknown (pass --region, or let the metadata service give it)");
        return None;
    };
    let endpoint = ess.metadata_endpoint.as_deref().unwrap_or(aliyun::ENDPOINT);
    let credentials = match aliyun::ram_credentials(endpoint).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "cannot complete the ESS lifecycle action: no RAM role credentials: {e}"
            );
            return None;
        }
    };
    match EssApi::new(ess.endpoint.as_ref(), region, credentials, settings.limits) {
        Ok(api) => finish(&api, &ess.action, joined).await,
        Err(e) => {
            tracing::warn!("cannot complete the ESS lifecycle action: {e}");
            None
        }
    }
}

/// Ends the action's wait: CONTINUE when `joined`, else ABANDON. Says what happened.
pub async fn finish(
    api: &dyn Lifecycle,
    action: &LifecycleAction,
    joined: bool,
) -> Option<LifecycleResult> {
    let result = if joined {
        LifecycleResult::Continue
    } else {
        LifecycleResult::Abandon
    };
    match api.complete(action, result).await {
        Ok(request) => {
            let hook = &action.hook_id;
            tracing::warn!(hook = %hook, request = %request, "completed the ESS lifecycle action: {}", result.as_str());
            Some(result)
        }
        Err(e) => {
            tracing::warn!(
                "could not complete the ESS lifecycle action ({}): {}",
                result.as_str(),
                crate::error::chain(&e)
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ess::RecordingLifecycle;
    use crate::model::secret::Secret;

    fn action() -> LifecycleAction {
        LifecycleAction {
            hook_id: "ash-bp1".into(),
            token: Secret::new("aaaa-bbbb"),
        }
    }

    #[tokio::test]
    async fn a_failed_join_abandons_and_a_joined_node_continues() {
        let api = RecordingLifecycle::default();
        assert_eq!(
            finish(&api, &action(), false).await,
            Some(LifecycleResult::Abandon)
        );
        assert_eq!(
            finish(&api, &action(), true).await,
            Some(LifecycleResult::Continue)
        );
        let calls = api.calls.lock().expect("calls").clone();
        assert_eq!(
            calls,
            [
                ("ash-bp1".to_owned(), LifecycleResult::Abandon),
                ("ash-bp1".to_owned(), LifecycleResult::Continue)
            ]
        );
        let refusing = RecordingLifecycle {
            refuse: true,
            ..Default::default()
        };
        assert_eq!(finish(&refusing, &action(), false).await, None);
    }
}
