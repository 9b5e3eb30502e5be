//! Cluster values from the control plane, in both formats: parsing never panics, and whatever
//! parses has passed validation (no secret in its printed form).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in [Some("application/json"), Some("text/plain"), None] {
        if let Ok(v) = node_attach::sources::values::parse(data, ct) {
            let printed = serde_json::to_string(&v).expect("values serialize");
            if let Some(t) = &v.bootstrap_token {
                assert!(!printed.contains(t.secret().expose()));
            }
        }
    }
});
