//! The `demolab-hub` binary as an operator meets it: `--check-config` on the shipped example and
//! on a broken file, `hash-password`, `openapi`, and a bare hub whose embedded broker generates
//! logins and refuses anonymous clients.

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
        stdout.contains("is valid") && stdout.contains("labs: 2") && stdout.contains("users: 4"),
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

/// Kills the hub when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_embedded_broker_of_a_bare_hub_refuses_anonymous_clients() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.toml");
    std::fs::write(
        &path,
        format!(
            "[hub]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[broker]\nlisten = \"127.0.0.1:0\"\n\
             [[labs]]\nid = \"lab-a\"\ngateways = [\"gw-a\"]\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write");
    let mut running = Running(
        hub()
            .args(["--config", path.to_str().expect("utf-8")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs"),
    );
    let mut stdout = BufReader::new(running.0.stdout.take().expect("stdout"));
    let mut banner = String::new();
    while !banner.contains("Press Ctrl-C") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "banner ended early: {banner}"
        );
        banner.push_str(&line);
    }
    let secrets_path = dir.path().join("data/mqtt/secrets.toml");
    assert!(
        banner.contains(&secrets_path.display().to_string()),
        "the banner says where the logins are: {banner}"
    );
    let port: u16 = banner
        .split("hub connects to 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no broker port in {banner}"));
    let secrets = std::fs::read_to_string(&secrets_path).expect("secrets");
    let password = secrets
        .lines()
        .find_map(|l| l.strip_prefix("gw-a = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no login for gw-a in {secrets}"))
        .to_owned();
    assert!(
        !banner.contains(&password),
        "a gateway's password is never printed"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connack = |login: Option<(&str, &str)>| {
            let mut options = rumqttc::MqttOptions::new("probe", "127.0.0.1", port);
            if let Some((user, password)) = login {
                options.set_credentials(user, password);
            }
            async move {
                let (_client, mut events) = rumqttc::AsyncClient::new(options, 4);
                tokio::time::timeout(std::time::Duration::from_secs(10), events.poll())
                    .await
                    .expect("an answer")
            }
        };
        match connack(None).await {
            Err(rumqttc::ConnectionError::ConnectionRefused(_)) => {}
            other => panic!("an anonymous client got {other:?}"),
        }
        match connack(Some(("gw-a", &password))).await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {}
            other => panic!("the gateway's generated login got {other:?}"),
        }
    });
}
