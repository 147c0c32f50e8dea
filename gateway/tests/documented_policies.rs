//! Every TOML block of README.md and docs/ passes `meshgate check`, completed as docs/policy.md
//! says (its first block is the head: a route's keys follow a route named `example`, whole
//! sections follow the head), and conf/examples/ pass too, with the files they name under
//! `/etc/meshgate/` made in a folder of their own.

mod common;

use std::path::{Path, PathBuf};

use common::pki::Authority;
use common::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The TOML blocks of a Markdown file, each with its first line's number.
fn toml_blocks(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some((i + 2, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The documented head: the first TOML block of docs/policy.md.
fn head() -> String {
    toml_blocks(&repo_root().join("docs/policy.md"))
        .into_iter()
        .next()
        .expect("docs/policy.md shows the head")
        .1
}

/// A block made a whole policy, as docs/policy.md says.
fn completed(block: &str, head: &str) -> String {
    let first_line = block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    if block.lines().any(|l| l.starts_with("version =")) {
        return block.to_owned();
    }
    if first_line == "[fleet]" {
        // A fleet node's local file holds no upstreams: the head up to them.
        let local = &head[..head.find("[[upstreams]]").unwrap_or(head.len())];
        return format!("{local}\n{block}");
    }
    if first_line.starts_with("[[") {
        return format!("{head}\n{block}");
    }
    format!(
        "{head}\n[[routes]]\nname = \"example\"\nsplit = [{{ upstream = \"orders\" }}]\n{block}"
    )
}

/// Makes every file `text` names under `/etc/meshgate/` in `dir` (certificates from one CA,
/// each key beside its certificate, the admin token) and points `text` there.
fn localize_files(text: &str, dir: &Path) -> String {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = Authority::new(&tls, "mesh-ca");
    let mut rest = text;
    while let Some(at) = rest.find("/etc/meshgate/") {
        let name = &rest[at + "/etc/meshgate/".len()..];
        let name = &name[..name.find('"').unwrap()];
        let file = Path::new(name);
        let stem = file.file_stem().unwrap().to_str().unwrap();
        if name.ends_with(".token") {
            write_token(&dir.join(name));
        } else if !stem.ends_with("-ca") && !dir.join(file.with_extension("crt")).exists() {
            let folder = dir.join(file.parent().unwrap());
            std::fs::create_dir_all(&folder).unwrap();
            ca.server(&folder, stem, "example.test", &["example.test"]);
        }
        rest = &rest[at + 1..];
    }
    text.replace("/etc/meshgate/", &format!("{}/", dir.display()))
}

/// `meshgate check` on `text`: its exit code and what it said.
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, localize_files(text, dir.path())).unwrap();
    meshgate_check(&[&policy])
}

#[test]
fn every_toml_block_of_the_docs_is_a_valid_policy() {
    let head = head();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut files = vec![repo_root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    for file in &files {
        for (line, block) in toml_blocks(file) {
            let (code, said) = check(&completed(&block, &head));
            checked += 1;
            let place = format!(
                "{}:{line}",
                file.strip_prefix(repo_root()).unwrap().display()
            );
            println!("{place}: exit {code:?}");
            if code != Some(0) {
                failures.push(format!("{place}:\n{said}"));
            }
        }
    }
    assert!(checked >= 9, "only {checked} blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_bundled_examples_pass_check_with_their_files_in_place() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("conf/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.push(repo_root().join("conf/meshgate.toml"));
    for example in examples {
        let text = std::fs::read_to_string(&example).unwrap();
        let (code, said) = check(&text);
        println!("{}: exit {code:?}\n{said}", example.display());
        assert_eq!(code, Some(0), "{}: {said}", example.display());
    }
}
