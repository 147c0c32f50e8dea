//! `GET /explain`'s query parser, then the path normalization `/explain` applies, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(query) = meshgate_admin::parse_explain_query(raw) {
        if let Ok(normal) = meshgate_policy::path::normalize_path(&query.path) {
            // The normal form is a fixed point.
            let again = meshgate_policy::path::normalize_path(&normal).expect("normal form refused");
            assert_eq!(again, normal);
        }
    }
});
