//! `[routes.headers]` rules with any names and values: the input is split at NUL bytes into
//! a rule kind, a header name and a value, written into a policy as TOML strings, and loaded.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A TOML basic string holding `text` exactly.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let (kind, name, value) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let rule = match kind.len() % 6 {
        0 => format!("request_set = {{ {} = {} }}", toml_string(name), toml_string(value)),
        1 => format!("request_add = {{ {} = {} }}", toml_string(name), toml_string(value)),
        2 => format!("request_remove = [{}]", toml_string(name)),
        3 => format!("response_set = {{ {} = {} }}", toml_string(name), toml_string(value)),
        4 => format!("response_add = {{ {} = {} }}", toml_string(name), toml_string(value)),
        _ => format!("response_remove = [{}, {}]", toml_string(name), toml_string(value)),
    };
    let policy = format!(
        "version = 1\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nsplit = [{{ upstream = \"u\" }}]\n[routes.headers]\n{rule}\n"
    );
    let base = std::path::Path::new("/nonexistent/meshgate-fuzz");
    if let Err(errors) = meshgate_policy::load(&policy, base) {
        for error in &errors {
            // Every refusal points into the headers table it was given.
            assert!(error.line >= 1);
        }
    }
});
