//! Cluster values from the control plane, in both formats: parsing never panics, and whatever
//! parses has passed validation (no secret in its printed form).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in [Some("application/json"), Some("text/plain"), None] {
        if let Ok(v) = node_attach::sources::values::parse(data, ct) {
            // The token prints redacted. (Its secret may still show where the answer repeats
            // it in another field, such as a callback URL's host: that is no leak, the answer
            // is what carried the token.)
            let printed = serde_json::to_value(&v).expect("values serialize");
            if let Some(t) = &v.bootstrap_token {
                let shown = printed["bootstrapToken"].as_str().expect("a token prints as text");
                assert!(!shown.contains(t.secret().expose()), "the token secret is printed");
            }
        }
    }
});
