//! The policy loader on any bytes, as `meshgate check` runs it: load, then format every error
//! as `FILE:LINE:COLUMN: path: message`. Nothing may panic, hang or grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // A base folder that does not exist: files the input names are looked up and refused,
    // never read from the machine running the fuzzer.
    let base = std::path::Path::new("/nonexistent/meshgate-fuzz");
    if let Err(errors) = meshgate_policy::load(source, base) {
        for error in &errors {
            let line = error.display_with_file("fuzz.toml");
            assert!(!line.is_empty());
        }
    }
});
