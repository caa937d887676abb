//! The `demolab-sim` binary as a developer meets it: a PLC on an ephemeral port that says where it
//! listens and what it holds, an OPC UA machine that makes the user certificate it accepts, and
//! a clear refusal of a machine model that does not exist.
//!
//! These tests are also why `cargo test --workspace` leaves `target/debug/demolab-sim` behind,
//! built with the workspace's features: CI's pymodbus step runs that binary instead of building
//! the package alone, which would resolve `async-opcua` with other features and compile it twice.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_demolab-sim"))
}

/// Kills the simulator even when an assertion fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The simulator's stdout lines, read on a thread so that waiting for one has a deadline.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts `command` (a `demolab-sim` with its arguments): its stdout lines, and the guard that
/// kills it.
fn spawn(command: &mut Command) -> (mpsc::Receiver<String>, Running) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demolab-sim starts");
    let lines = stdout_lines(&mut child);
    (lines, Running(child))
}

fn line_starting_with(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?} within a minute: {e}"),
        }
    }
}

#[test]
fn a_held_plc_on_port_zero_prints_its_port_and_values_and_serves_them() {
    let (lines, _running) = spawn(
        sim()
            .args(["plc", "--listen", "127.0.0.1:0", "--machine", "compressor"])
            .args(["--seed", "3", "--hold"]),
    );

    let listening = line_starting_with(&lines, "PLC LISTENING ");
    let addr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("the LISTENING line names the address");
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a numeric port");
    assert_ne!(
        port, 0,
        "port 0 must be resolved to the real port: {listening}"
    );
    assert!(listening.contains("machine=compressor"), "{listening}");
    assert!(listening.contains("hold=true"), "{listening}");

    let values = line_starting_with(&lines, "PLC VALUES ");
    let json: serde_json::Value =
        serde_json::from_str(&values["PLC VALUES ".len()..]).expect("the VALUES line is JSON");
    let metrics = json["values"].as_array().expect("a values array");
    let announced: usize = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("metrics="))
        .and_then(|n| n.parse().ok())
        .expect("the LISTENING line counts the metrics");
    assert_eq!(metrics.len(), announced, "{values}");
    for metric in metrics {
        assert!(
            metric["metric"].is_string() && metric["value"].is_number(),
            "{metric}"
        );
    }

    // A Modbus request for the state register (holding 1000, function 3, unit 1) is answered.
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("the PLC accepts a client");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = [0, 7, 0, 0, 0, 6, 1, 3, 0x03, 0xE8, 0, 1];
    std::io::Write::write_all(&mut socket, &request).expect("request sent");
    let mut response = [0u8; 11];
    socket.read_exact(&mut response).expect("a whole response");
    assert_eq!(&response[..2], &[0, 7], "the transaction id is echoed");
    assert_eq!(response[7], 3, "not an exception: {response:?}");
    let state = u16::from_be_bytes([response[9], response[10]]);
    assert_eq!(
        u64::from(state),
        json["state"].as_u64().expect("a numeric state"),
        "the register holds the printed state"
    );
}

#[test]
fn an_unknown_machine_model_is_refused_with_the_known_ones() {
    let output = sim()
        .args(["plc", "--listen", "127.0.0.1:0", "--machine", "toaster"])
        .output()
        .expect("demolab-sim runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("toaster") && stderr.contains("compressor"),
        "{stderr}"
    );
}

#[test]
fn an_opcua_machine_makes_the_user_certificate_it_accepts_and_says_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    let (lines, _running) = spawn(
        sim()
            .args([
                "opcua",
                "--listen",
                "127.0.0.1:0",
                "--secure",
                "--x509-user",
                "gw",
            ])
            .arg("--pki-dir")
            .arg(&pki),
    );

    let user = line_starting_with(&lines, "OPCUA X509 USER ");
    let field = |name: &str| {
        user.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {user}"))
            .to_owned()
    };
    let certificate = std::path::PathBuf::from(field("certificate="));
    let key = std::path::PathBuf::from(field("private_key="));
    assert_eq!(certificate, pki.join("users/gw.der"));
    assert!(std::fs::metadata(&certificate).is_ok_and(|m| m.len() > 0));
    let pem = std::fs::read_to_string(&key).expect("the key is text");
    assert!(pem.contains("PRIVATE KEY"), "{pem}");

    let listening = line_starting_with(&lines, "OPCUA LISTENING ");
    assert!(
        listening.contains("logins=x509:gw") && listening.contains("basic256sha256=true"),
        "a certificate login only, on the secure endpoints too: {listening}"
    );
}
