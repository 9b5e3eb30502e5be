//! cluster-info as discovery sees it: a ConfigMap body, its kubeconfig, the detached JWS and the
//! CA bundle inside. Nothing here may panic, and a signature may only verify for the exact bytes
//! it was computed over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_attach::model::kubeconfig::Kubeconfig;
use node_attach::trust::{jws, pin};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The ConfigMap JSON and the kubeconfig YAML inside it.
    if let Ok(cm) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(k) = cm["data"]["kubeconfig"].as_str() {
            if let Ok(cfg) = Kubeconfig::parse(k) {
                if let Ok(info) = cfg.current_cluster() {
                    let _ = pin::certificates_from_pem(&info.ca_pem);
                }
            }
        }
    }
    if let Ok(cfg) = Kubeconfig::parse(&text) {
        let _ = cfg.current_cluster();
        let _ = cfg.to_yaml();
    }
    // A signature made over these bytes verifies; over anything else it does not.
    let sig = jws::detached_signature(data, "abcdef", "0123456789abcdef");
    assert!(jws::verify_detached(&sig, data, "abcdef", "0123456789abcdef"));
    let mut other = data.to_vec();
    other.push(b'\n');
    assert!(!jws::verify_detached(&sig, &other, "abcdef", "0123456789abcdef"));
    // Arbitrary text presented as a signature never verifies by accident.
    let _ = jws::verify_detached(&text, b"payload", "abcdef", "0123456789abcdef");
});
