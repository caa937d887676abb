//! `demolab --config region.toml` brings a lab the binary was never compiled with: a PLC
//! simulator read over Modbus TCP, a simulated machine tool read over OPC UA and a simulated
//! sensor node over MQTT, all live on the hub's REST API with samples arriving; and
//! `--check-config` names the key of a broken file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Start-up in a debug build on a shared machine: generous, but a deadline.
const DEADLINE: Duration = Duration::from_secs(120);

const REGION: &str = r#"
[simulation]
seed = 3

[[labs]]
id = "byo-lab"
name = "Bring your own lab"
gateway = "gw-byo"
public = true

[[labs.machines]]
id = "plc-compressor"
kind = "compressor"
name = "Compressor behind a PLC"
source = { type = "simulated-modbus" }

[[labs.machines]]
id = "mill-1"
kind = "cnc-mill"
source = { type = "simulated-mqtt" }

[[labs.machines]]
id = "cnc-opc"
kind = "cnc-mill"
name = "Machine tool speaking OPC UA"
source = { type = "simulated-opcua" }

[[users]]
name = "operator"
role = "operator"
password_env = "BYO_LAB_OPERATOR_PASSWORD_UNSET"
"#;

/// Kills the region if a test fails before stopping it.
struct Demo(Option<Child>);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn twin(web: &str, id: &str) -> serde_json::Value {
    let (status, body) = get(web, &format!("/api/v1/twins/{id}"));
    assert_eq!(status, 200, "{id}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The newest source timestamp of any reported property of a twin.
fn newest_sample(twin: &serde_json::Value) -> Option<u64> {
    twin["features"]
        .as_object()?
        .values()
        .filter_map(|feature| feature["properties"].as_object())
        .flat_map(|properties| properties.values())
        .filter(|p| p["reported"].is_number())
        .filter_map(|p| p["timestamp"].as_u64())
        .max()
}

fn check_config(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_demolab"))
        .arg("--config")
        .arg(path)
        .arg("--check-config")
        .output()
        .expect("runs")
}

#[test]
fn check_config_summarises_a_good_file_and_names_the_key_of_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("region.toml");
    std::fs::write(&good, REGION).expect("written");
    let output = check_config(&good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("plc-compressor (compressor) from a simulated PLC over Modbus TCP"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, REGION.replace("cnc-mill", "cnc-mil")).expect("written");
    let output = check_config(&bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("labs[0].machines[1].kind"), "{stderr}");
}

#[test]
fn a_region_file_with_a_plc_an_opcua_machine_and_an_mqtt_node_runs_and_all_twins_are_live() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("region.toml");
    std::fs::write(&config, REGION).expect("written");
    let mut demo = Demo(Some(
        Command::new(env!("CARGO_BIN_EXE_demolab"))
            .arg("--config")
            .arg(&config)
            .args(["--http-port", "0", "--mqtt-port", "0", "--sample-ms", "100"])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts"),
    ));
    let child = demo.0.as_mut().expect("running");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.expect("utf-8")).is_err() {
                break;
            }
        }
    });
    // The banner comes once every machine of the file is online on the hub.
    let mut banner = Vec::new();
    let mut rules = 0;
    while rules < 2 {
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("the banner within the deadline");
        if line.starts_with('═') {
            rules += 1;
        } else if rules == 1 {
            banner.push(line.trim().to_owned());
        }
    }
    let web = banner
        .iter()
        .find_map(|l| l.strip_prefix("web: http://"))
        .expect("a web line")
        .to_owned();
    let lab = banner
        .iter()
        .find(|l| l.starts_with("lab: byo-lab "))
        .expect("a lab line");
    assert!(lab.contains("mill-1 over MQTT"), "{lab}");
    assert!(
        lab.contains("plc-compressor on a simulated PLC (Modbus TCP 127.0.0.1:"),
        "{lab}"
    );
    assert!(
        lab.contains("cnc-opc on a simulated OPC UA server (opc.tcp://127.0.0.1:"),
        "{lab}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("operator login: operator / ")),
        "{banner:#?}"
    );

    let (status, body) = get(&web, "/api/v1/twins");
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(all.as_array().map(Vec::len), Some(3), "{body}");
    let mut first = Vec::new();
    for (id, kind) in [
        ("byo-lab/plc-compressor", "compressor"),
        ("byo-lab/mill-1", "cnc-mill"),
        ("byo-lab/cnc-opc", "cnc-mill"),
    ] {
        let twin = twin(&web, id);
        assert_eq!(twin["connectivity"]["online"], true, "{twin}");
        assert_eq!(twin["kind"], kind, "{twin}");
        assert_eq!(twin["connectivity"]["gateway"], "gw-byo", "{twin}");
        first.push((id, newest_sample(&twin)));
    }

    // Samples keep arriving: each twin's newest source timestamp moves on. A condition wait
    // with a deadline; the pause only spares the hub a busy loop of requests.
    for (id, before) in first {
        let until = Instant::now() + DEADLINE;
        loop {
            let now = newest_sample(&twin(&web, id));
            if now.is_some() && now > before {
                break;
            }
            assert!(
                Instant::now() < until,
                "{id}: no new sample after {before:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // The PLC's registers arrive as the catalogue's metrics with their units.
    let pressure =
        &twin(&web, "byo-lab/plc-compressor")["features"]["air"]["properties"]["pressure_bar"];
    assert_eq!(pressure["unit"], "bar", "{pressure}");
    assert!(pressure["reported"].is_number(), "{pressure}");
    // And the OPC UA server's monitored variables, with their engineering units.
    let power = &twin(&web, "byo-lab/cnc-opc")["features"]["spindle"]["properties"]["power_w"];
    assert_eq!(power["unit"], "W", "{power}");
    assert!(power["reported"].is_number(), "{power}");

    // Ctrl-C stops it cleanly, within the deadline.
    let mut child = demo.0.take().expect("running");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let exit = done
        .recv_timeout(DEADLINE)
        .expect("stops within the deadline")
        .expect("waits");
    assert!(exit.success(), "{exit:?}");
}
