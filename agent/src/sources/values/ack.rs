//! ACK's `node_info` answer: shell-style `key=value` lines, which attach_node.sh `eval`s.
//!
//! We read it strictly as data: one `key=value` per line (an optional `export ` prefix and one
//! layer of matching quotes are tolerated), no expansion, no escapes. Known keys are
//! `docker_version`, `cluster_dns`, `token`, `endpoint`, `callback_url`, `name_mode` and
//! `network` (attach_node.sh's `public::common::get_node_info`), and node-attach's own
//! `artifacts_url`, `artifacts_public_key`, `kubelet_version`, `air_gap` and `runtime_source`;
//! each is validated like the matching flag. Unknown keys are reported and ignored, so a newer control plane does not break
//! older agents; a key given twice, or a line that is not `key=value`, refuses the whole answer.

use super::{
    check_artifacts_url, check_callback, check_identifier, check_package_version, check_public_key,
    invalid, ClusterValues, NodeNameMode, RuntimeKind, RuntimeSource, ValuesError, ValuesFormat,
};
use crate::model::token::BootstrapToken;
use crate::model::validate::{parse_ip_list, Endpoint};
use std::collections::BTreeSet;

/// Parses ACK's key=value text.
pub fn parse(text: &str) -> Result<ClusterValues, ValuesError> {
    let mut v = ClusterValues::empty(ValuesFormat::AckText);
    let mut seen = BTreeSet::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(format!("line {}", n + 1), "expected key=value"));
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                format!("line {}", n + 1),
                "the key must be lowercase letters, digits and '_'",
            ));
        }
        if !seen.insert(key.to_owned()) {
            return Err(invalid(key, "given more than once"));
        }
        let value = unquote(value).ok_or_else(|| {
            invalid(
                key,
                "the value has unbalanced quotes or shell syntax; node-attach reads values as plain data",
            )
        })?;
        apply(&mut v, key, value)?;
    }
    if seen.is_empty() {
        return Err(invalid("body", "no key=value lines"));
    }
    Ok(v)
}

/// Strips one layer of matching quotes. Refuses anything a shell would expand, so what we read
/// is what attach_node.sh's `eval` would have set, or an error.
fn unquote(value: &str) -> Option<&str> {
    let v = value.trim();
    let inner = match v.as_bytes() {
        [b'"', .., b'"'] | [b'\'', .., b'\''] if v.len() >= 2 => &v[1..v.len() - 1],
        _ => v,
    };
    let shell = |b: u8| {
        matches!(
            b,
            b'"' | b'\''
                | b'`'
                | b'$'
                | b'\\'
                | b';'
                | b'&'
                | b'|'
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'\n'
        )
    };
    if inner.bytes().any(shell) || (inner.contains(' ') && inner.len() == v.len()) {
        return None;
    }
    Some(inner)
}

fn apply(v: &mut ClusterValues, key: &str, value: &str) -> Result<(), ValuesError> {
    if value.is_empty() {
        // attach_node.sh treats an empty value as unset.
        return Ok(());
    }
    match key {
        "docker_version" => {
            check_package_version(key, value)?;
            v.runtime.name = Some(RuntimeKind::Docker);
            v.runtime.version = Some(value.to_owned());
        }
        "cluster_dns" => v.cluster_dns = parse_ip_list(key, value)?,
        "token" => {
            v.bootstrap_token = Some(
                value
                    .parse::<BootstrapToken>()
                    .map_err(|e| invalid(key, e.to_string()))?,
            )
        }
        "endpoint" => v.api_server_endpoints = vec![Endpoint::parse(key, value)?],
        "callback_url" => v.callback_url = Some(check_callback(key, value)?),
        "name_mode" => v.node_name_mode = Some(NodeNameMode::parse(key, value)?),
        "network" => {
            check_identifier(key, value)?;
            v.network = Some(value.to_owned());
        }
        "artifacts_url" => v.artifacts.url = Some(check_artifacts_url(key, value)?),
        "artifacts_public_key" => v.artifacts.public_key = Some(check_public_key(key, value)?),
        "kubelet_version" => {
            v.artifacts.kubelet_version = Some(
                value
                    .parse()
                    .map_err(|e: crate::model::version::VersionError| {
                        invalid(key, e.to_string())
                    })?,
            )
        }
        "air_gap" => {
            v.artifacts.air_gap = Some(match value {
                "true" => true,
                "false" => false,
                _ => return Err(invalid(key, "expected true or false")),
            })
        }
        "runtime_source" => v.artifacts.runtime_source = Some(RuntimeSource::parse(key, value)?),
        other => {
            tracing::warn!(
                key = other,
                "ignoring an unknown key in the node_info answer"
            );
            v.ignored_keys.push(other.to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "docker_version=19.03.15\ncluster_dns=172.19.0.10\ntoken=264db1.30bcc2b89969a4ca\nendpoint=192.168.0.80:6443\ncallback_url=\"http://cs-anony.aliyuncs.com/token/abc/instance/i-1/callback\"\nname_mode=nodeip\nnetwork=flannel\n";

    #[test]
    fn reads_the_ack_answer() {
        let v = parse(SAMPLE).expect("valid");
        assert_eq!(v.format, ValuesFormat::AckText);
        assert_eq!(v.runtime.name, Some(RuntimeKind::Docker));
        assert_eq!(v.runtime.version.as_deref(), Some("19.03.15"));
        assert_eq!(v.cluster_dns[0].to_string(), "172.19.0.10");
        assert_eq!(v.api_server_endpoints[0].to_string(), "192.168.0.80:6443");
        assert_eq!(v.node_name_mode, Some(NodeNameMode::NodeIp));
        assert_eq!(v.network.as_deref(), Some("flannel"));
        assert!(v.callback_url.is_some());
    }

    #[test]
    fn reads_the_artifact_keys() {
        let v = parse("artifacts_url=https://mirror.example/k8s\nartifacts_public_key=ed25519:bSctQPDsCU9/H4QoQylJg2/A5mK5N5kvpEXpOaEsS2s=\nkubelet_version=v1.20.2\nair_gap=true\nruntime_source=package\n").expect("valid");
        assert_eq!(
            v.artifacts.url.as_ref().map(url::Url::as_str),
            Some("https://mirror.example/k8s/")
        );
        assert!(v.artifacts.public_key.is_some());
        assert_eq!(v.artifacts.air_gap, Some(true));
        assert_eq!(v.artifacts.runtime_source, Some(RuntimeSource::Package));
        for bad in [
            "artifacts_url=http://m",
            "artifacts_public_key=x",
            "air_gap=yes",
            "kubelet_version=new",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tolerates_export_comments_quotes_and_unknown_keys() {
        let v = parse("# values\nexport token='264db1.30bcc2b89969a4ca'\n\nfuture_key=1\n")
            .expect("valid");
        assert!(v.bootstrap_token.is_some());
        assert_eq!(v.ignored_keys, ["future_key"]);
    }

    #[test]
    fn never_accepts_shell() {
        for bad in [
            "endpoint=$(curl evil)",
            "endpoint=`id`",
            "token=264db1.30bcc2b89969a4ca; rm -rf /",
            "network=a b",
            "endpoint=\"a",
            "cluster_dns=1.1.1.1 && reboot",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("token=nope", "token"),
            ("endpoint=a:b", "endpoint"),
            ("cluster_dns=10.0.0", "cluster_dns"),
            ("name_mode=custom", "name_mode"),
            ("docker_version=!!", "docker_version"),
            (
                "token=264db1.30bcc2b89969a4ca\ntoken=264db1.30bcc2b89969a4ca",
                "token",
            ),
            ("just text", "line 1"),
            ("", "body"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
            assert!(!err.to_string().contains("30bcc2b89969a4ca"), "{err}");
        }
    }
}
