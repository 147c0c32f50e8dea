//! End to end: one size limit for a policy, however it arrives: `meshgate check`, the file
//! the gateway reloads, and the admin API's body all take a policy of up to 1 MiB and refuse
//! one byte more, saying so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// `policy` padded with a comment to exactly `size` bytes.
fn padded(policy: &str, size: usize) -> String {
    let mut text = format!("{policy}\n# ");
    let fill = size - text.len() - 1;
    text.extend(std::iter::repeat_n('x', fill));
    text.push('\n');
    assert_eq!(text.len(), size);
    text
}

#[test]
fn the_api_body_limit_is_the_policy_limit() {
    assert_eq!(
        meshgate_admin::MAX_BODY_BYTES as u64,
        meshgate_policy::files::MAX_POLICY_FILE
    );
    assert_eq!(meshgate_policy::files::MAX_POLICY_FILE, 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_of_one_mib_passes_every_way_in_and_one_byte_more_fails_every_way() {
    let limit = 1024 * 1024;
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&route_to(echo, ""));
    let base = gateway.policy_with_body(&route_to(echo, ""));
    let fits = padded(&base, limit);
    let over = padded(&base, limit + 1);
    let check = |text: &str| {
        let file = gateway.dir.path().join("candidate.toml");
        std::fs::write(&file, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, said) = check(&fits);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = check(&over);
    println!("check: {said}");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("1048576 bytes"), "{said}");

    let validate = |text: String| {
        client()
            .post(gateway.admin_url("/policy/validate"))
            .bearer_auth(TOKEN)
            .body(text)
            .send()
    };
    assert_eq!(validate(fits.clone()).await.unwrap().status(), 200);
    let refused = validate(over.clone()).await.unwrap();
    assert_eq!(refused.status(), 413);
    let body = refused.text().await.unwrap();
    println!("API: {body}");
    assert!(body.contains("1048576 bytes"), "{body}");

    // The file: a reload of the larger one is refused and the old policy keeps serving.
    std::fs::write(&gateway.policy_path, &over).unwrap();
    let reload = client()
        .post(gateway.admin_url("/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = reload.status();
    let body = reload.text().await.unwrap();
    println!("reload: {status} {body}");
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{body}"
    );
    assert!(body.contains("1048576 bytes"), "{body}");
    let served = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    std::fs::write(&gateway.policy_path, &fits).unwrap();
    let reload = client()
        .post(gateway.admin_url("/reload"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
}
