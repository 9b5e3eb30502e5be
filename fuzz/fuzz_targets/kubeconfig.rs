//! Kubeconfig YAML (cluster-info's, `--kubeconfig` files): parsing never panics, a parsed
//! kubeconfig renders to YAML that parses back to the same kubeconfig, and the current
//! cluster's server is always an https URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_attach::model::kubeconfig::Kubeconfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Kubeconfig::parse(text) else {
        return;
    };
    let again = Kubeconfig::parse(&cfg.to_yaml()).expect("a rendered kubeconfig parses");
    assert_eq!(again.to_yaml(), cfg.to_yaml(), "the rendering is not stable");
    if let Ok(info) = cfg.current_cluster() {
        assert!(info.server.starts_with("https://"), "{}", info.server);
    }
});
