//! Helpers of the policy loader's tests.

#![allow(dead_code)]

use std::path::Path;

use meshgate_policy::{load, PolicyError};

/// The errors of a policy that must be refused.
pub fn refused(source: &str) -> Vec<PolicyError> {
    load(source, Path::new(".")).expect_err("policy should be refused")
}

/// Whether `errors` has one at `line` for `path` whose message contains `message`.
pub fn has(errors: &[PolicyError], line: usize, path: &str, message: &str) -> bool {
    errors
        .iter()
        .any(|e| e.line == line && e.path == path && e.message.contains(message))
}

/// Asserts that `errors` has each `(line, path, message part)` of `expected`.
pub fn assert_errors(errors: &[PolicyError], expected: &[(usize, &str, &str)]) {
    for (line, path, message) in expected {
        assert!(
            has(errors, *line, path, message),
            "missing {line} {path} {message:?} in {errors:#?}"
        );
    }
}

/// Writes a self-signed certificate for `name` and its key into `dir`.
pub fn write_pair(dir: &Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}
