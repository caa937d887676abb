//! `demolab-broker-files` as an operator runs it.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_demolab-broker-files");

fn hash(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn writes_all_three_files_from_an_access_config_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.toml");
    std::fs::write(
        &access,
        format!(
            "[[users]]\nname = \"gw-a\"\npassword_hash = \"{}\"\nrole = \"gateway\"\nlab = \"lab-a\"\n",
            hash("pw-a")
        ),
    )
    .unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "[passwords]\ngw-a = \"pw-a\"\n").unwrap();
    let out = dir.path().join("mosquitto");

    let status = Command::new(BIN)
        .arg("--access")
        .arg(&access)
        .arg("--out")
        .arg(&out)
        .arg("--secrets")
        .arg(&secrets)
        .args(["--port", "18830", "--files-dir", "/etc/mosquitto/demolab"])
        .status()
        .unwrap();
    assert!(status.success());

    let conf = std::fs::read_to_string(out.join("mosquitto.conf")).unwrap();
    assert!(conf.contains("listener 18830\n"), "{conf}");
    assert!(
        conf.contains("acl_file /etc/mosquitto/demolab/acl_file\n"),
        "{conf}"
    );
    assert!(conf.contains("allow_anonymous false\n"), "{conf}");
    let acl = std::fs::read_to_string(out.join("acl_file")).unwrap();
    assert!(acl.contains("user gw-a\n"), "{acl}");
    let passwords = std::fs::read_to_string(out.join("password_file")).unwrap();
    assert!(passwords.starts_with("gw-a:$7$101$"), "{passwords}");
}

#[test]
fn a_secret_that_does_not_match_the_hash_fails_naming_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.toml");
    std::fs::write(
        &access,
        format!(
            "[[users]]\nname = \"gw-a\"\npassword_hash = \"{}\"\nrole = \"gateway\"\nlab = \"lab-a\"\n",
            hash("pw-a")
        ),
    )
    .unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "[passwords]\ngw-a = \"typo\"\n").unwrap();
    let output = Command::new(BIN)
        .arg("--access")
        .arg(&access)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("passwords.gw-a: does not match"),
        "{stderr}"
    );
}
