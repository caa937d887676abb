//! The `demolab-hub` binary as an operator meets it: `--check-config` on the shipped example and
//! on a broken file, `hash-password`, and `openapi`.

use std::io::Write;
use std::process::{Command, Stdio};

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_demolab-hub"))
}

#[test]
fn the_shipped_example_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hub.toml");
    let output = hub()
        .args(["--config", example, "--check-config"])
        .env("DEMOLAB_HUB_MQTT_PASSWORD", "secret")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("is valid") && stdout.contains("labs: 2") && stdout.contains("users: 3"),
        "{stdout}"
    );
}

#[test]
fn a_broken_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.toml");
    std::fs::write(
        &path,
        "[[labs]]\nid = \"lab-a\"\n[[labs.machines]]\nid = \"m-1\"\nkind = \"toaster\"\n",
    )
    .expect("write");
    let output = hub()
        .args(["--config", path.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("labs[0].machines[0].kind") && stderr.contains("toaster"),
        "{stderr}"
    );
}

#[test]
fn hash_password_prints_a_hash_the_config_accepts() {
    let mut child = hub()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"turning\n")
        .expect("write");
    let output = child.wait_with_output().expect("exits");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("utf-8");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(broker::access::verify_password(hash.trim(), b"turning"));
    assert!(!broker::access::verify_password(hash.trim(), b"milling"));
}

#[test]
fn openapi_prints_the_document() {
    let output = hub().arg("openapi").output().expect("runs");
    assert!(output.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(doc["paths"]["/api/v1/twins/{lab}/{machine}/history"]["get"].is_object());
}
