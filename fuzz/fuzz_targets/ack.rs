//! ACK's `node_info` key=value text, which attach_node.sh `eval`s and node-attach reads as data
//! only: parsing never panics, and no accepted value that becomes configuration text (runtime
//! version, network, endpoint) carries anything a shell would expand. (A callback URL is a
//! WHATWG URL, whose host may hold such characters: it is only ever requested, never written
//! into a file a shell reads.)
#![no_main]

use libfuzzer_sys::fuzz_target;

const SHELL: &[char] = &['$', '`', ';', '|', '&', '<', '>', '(', ')', '\\', '\n', '"', '\''];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = node_attach::sources::values::ack::parse(text) else {
        return;
    };
    let mut seen: Vec<String> = Vec::new();
    if let Some(r) = &v.runtime.version {
        seen.push(r.clone());
    }
    if let Some(n) = &v.network {
        seen.push(n.clone());
    }
    seen.extend(v.api_server_endpoints.iter().map(ToString::to_string));
    for s in &seen {
        assert!(!s.contains(SHELL), "shell syntax accepted: {s:?}");
    }
    // The token prints redacted (the secret may still show where the answer itself repeats
    // it in another field, such as a callback URL: that is not a leak).
    let printed = serde_json::to_value(&v).expect("values serialize");
    if let Some(t) = &v.bootstrap_token {
        let shown = printed["bootstrapToken"].as_str().expect("the token prints as text");
        assert!(!shown.contains(t.secret().expose()), "the token secret is printed");
    }
});
