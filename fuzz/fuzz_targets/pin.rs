//! CA pins and PEM bundles: parsing never panics, and a parsed pin prints back to a form that
//! parses to the same pin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_attach::trust::pin::{certificates_from_pem, CaPin, PinSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = text.parse::<CaPin>() {
            let again: CaPin = p.to_string().parse().expect("a printed pin parses");
            assert_eq!(p, again);
        }
    }
    if let Ok(certs) = certificates_from_pem(data) {
        let set = PinSet::new(certs.iter().filter_map(|c| CaPin::of_certificate_der(c).ok()));
        assert!(set.first_match(&certs).expect("parsed certificates hash").is_some());
    }
});
