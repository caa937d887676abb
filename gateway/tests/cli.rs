//! The `demolab-gateway` binary as an operator meets it: `--check-config` on the shipped example
//! and on a broken file, and `--help`.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_demolab-gateway"))
}

#[test]
fn the_shipped_example_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/gateway.toml");
    let output = gateway()
        .args(["--config", example, "--check-config"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("is valid") && stdout.contains("lab: aarhus-machining"),
        "{stdout}"
    );
}

#[test]
fn a_broken_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "lab = \"lab-a\"\ngateway = \"GW\"\n[uplink]\nhost = \"h\"\n",
    )
    .expect("write");
    let output = gateway()
        .args(["--config", path.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`gateway`") && stderr.contains("\"GW\""),
        "{stderr}"
    );
}

#[test]
fn help_names_every_flag() {
    let output = gateway().arg("--help").output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("--config") && stdout.contains("--check-config"),
        "{stdout}"
    );
}
