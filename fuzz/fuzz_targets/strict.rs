//! The strict JSON and YAML reader every untrusted document goes through (cluster-info, API
//! answers, kubeconfigs, ConfigMaps, values, `join --config`). Nothing may panic or take more
//! than linear time; whatever it accepts is within its bounds, and a JSON document it accepts
//! is exactly what serde_json reads from the same bytes (a duplicate key never gets through, so
//! no two readers of the bytes can disagree); a YAML document it accepts renders to YAML it
//! reads back as the same document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_attach::model::strict::{self, StrictError, MAX_BYTES};

fuzz_target!(|data: &[u8]| {
    match strict::json::<serde_json::Value>(data) {
        Ok(v) => {
            assert!(data.len() <= MAX_BYTES);
            let plain: serde_json::Value =
                serde_json::from_slice(data).expect("strict JSON is JSON");
            assert_eq!(plain, v, "strict and plain readers disagree");
        }
        Err(StrictError::TooLarge) => assert!(data.len() > MAX_BYTES),
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = strict::yaml::<serde_yaml_ng::Value>(text) {
            assert!(text.len() <= MAX_BYTES);
            // What node-attach renders from a document it read, it reads back the same. (Not
            // with tags: serde_yaml_ng writes a %-escaped tag back unescaped, which libyaml
            // cannot read, and no input node-attach reads has tags; nor with aliases, which a
            // rendering spells out, so it may outgrow the bounds.)
            // And only well within the bounds: a rendering turns flow collections into
            // indentation and folds long strings onto indented lines, so a document at the
            // limit may render just past it (node-attach's own renderings are small).
            let tagged = text.contains('!') || text.contains('*');
            let small = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() <= 32
                && text.lines().all(|l| l.len() - l.trim_start().len() <= 32);
            if let (Ok(rendered), false, true) = (serde_yaml_ng::to_string(&v), tagged, small) {
                let again: serde_yaml_ng::Value =
                    strict::yaml(&rendered).expect("a rendered document reads back");
                assert_eq!(again, v, "the rendering reads back differently");
            }
        }
    }
});
