//! End to end: `meshgate check --fleet DOC [--local NODE.toml]` lints a fleet document with no
//! etcd, alone or merged with a node's file, as CI would before `meshgate fleet push`.

mod common;

use common::*;

fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    meshgate_check(args)
}

#[test]
fn a_fleet_document_is_checked_alone_or_with_a_nodes_file() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("fleet.toml");
    let good = "[[upstreams]]\nname = \"orders\"\nendpoints = [\"127.0.0.1:9000\"]\n\n[[routes]]\nname = \"orders\"\nlisteners = [\"internal\"]\nsplit = [{ upstream = \"orders\" }]\n";
    std::fs::write(&doc, good).unwrap();
    let (code, said) = run(&["--fleet".as_ref(), doc.as_os_str()]);
    println!("alone: {said}");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("ok"), "{said}");

    // An error in the document: its line, column and key.
    std::fs::write(
        &doc,
        good.replace("{ upstream = \"orders\" }", "{ upstream = \"ordrs\" }"),
    )
    .unwrap();
    let (code, said) = run(&["--fleet".as_ref(), doc.as_os_str()]);
    println!("unknown upstream: {said}");
    assert_eq!(code, Some(1));
    assert!(
        said.contains(&format!("{}:8:", doc.display()))
            && said.contains("routes[0].split[0].upstream"),
        "{said}"
    );

    // A node-local section, or `version`, is not a fleet document's.
    std::fs::write(
        &doc,
        format!("version = 1\n[[listeners]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\n{good}"),
    )
    .unwrap();
    let (code, said) = run(&["--fleet".as_ref(), doc.as_os_str()]);
    println!("local sections: {said}");
    assert_eq!(code, Some(1));
    assert!(said.contains("listeners") && said.contains(":2:"), "{said}");

    // With the node's file: the node has no `internal` listener.
    std::fs::write(&doc, good).unwrap();
    let node = dir.path().join("node.toml");
    write_token(&dir.path().join("admin.token"));
    std::fs::write(
        &node,
        "version = 1\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:18080\"\n[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/meshgate/prod\"\nnode = \"gw-1\"\n",
    )
    .unwrap();
    let (code, said) = run(&[
        "--fleet".as_ref(),
        doc.as_os_str(),
        "--local".as_ref(),
        node.as_os_str(),
    ]);
    println!("with the node's file: {said}");
    assert_eq!(code, Some(1));
    assert!(said.contains(&format!("{}:7:", doc.display())), "{said}");
    assert!(said.contains("internal"), "{said}");
    // The same document for a node that has the listener passes.
    std::fs::write(
        &node,
        std::fs::read_to_string(&node)
            .unwrap()
            .replace("name = \"public\"", "name = \"internal\""),
    )
    .unwrap();
    let (code, said) = run(&[
        "--fleet".as_ref(),
        doc.as_os_str(),
        "--local".as_ref(),
        node.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{said}");
}
