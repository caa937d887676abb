//! The `demolab` binary as a newcomer meets it: the banner comes once start-up is complete —
//! every URL it names answers and every machine it lists is live — it stands apart from the
//! logs, which are quiet by default, and Ctrl-C stops the region cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Start-up in a debug build on a shared machine: generous, but a deadline.
const DEADLINE: Duration = Duration::from_secs(120);

/// Kills the demo if a test fails before stopping it.
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

/// The value after `key: ` on the banner line that starts with it.
fn field<'a>(banner: &'a [String], key: &str) -> &'a str {
    banner
        .iter()
        .find_map(|line| line.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key}: line in {banner:#?}"))
}

#[test]
fn the_banner_comes_after_start_up_and_everything_it_names_answers() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut demo = Demo(Some(
        Command::new(env!("CARGO_BIN_EXE_demolab"))
            .args([
                "--http-port",
                "0",
                "--mqtt-port",
                "0",
                "--machines-per-lab",
                "1",
            ])
            .args(["--sample-ms", "200", "--data-dir"])
            .arg(data.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
    let (stderr_tx, stderr) = mpsc::channel();
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        let _ = stderr_tx.send(text);
    });

    // Everything on stdout up to the banner's closing rule.
    let mut before = Vec::new();
    let mut banner = Vec::new();
    let mut rules = 0;
    while rules < 2 {
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("the banner within the deadline");
        if line.starts_with('═') {
            rules += 1;
        } else if rules == 1 {
            banner.push(line);
        } else {
            before.push(line);
        }
    }
    assert!(
        before.iter().all(|line| line.trim().is_empty()),
        "nothing but a blank line before the banner: {before:#?}"
    );
    assert_eq!(banner[0].trim(), "Demolab demo region is running");

    // It was printed after start-up: every URL answers at once and every machine is live.
    let web = field(&banner, "web").trim_start_matches("http://");
    let (status, page) = get(web, "/");
    assert_eq!(status, 200, "{page}");
    let api = field(&banner, "api");
    let docs = api
        .strip_prefix(&format!("http://{web}"))
        .expect("the API on the web address");
    assert_eq!(get(web, docs).0, 200);
    assert_eq!(get(web, "/readyz").0, 200);
    let (status, body) = get(web, "/api/v1/twins");
    assert_eq!(status, 200, "{body}");
    let twins: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let twins = twins.as_array().expect("a list");
    let labs: Vec<&str> = banner
        .iter()
        .filter_map(|line| line.trim().strip_prefix("lab: "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert_eq!(labs, ["aarhus-machining", "odense-machining"]);
    // Per lab, as the lab lines say: 1 mill, compressor-1, printer-1 and lathe-1.
    assert_eq!(twins.len(), labs.len() * 4, "{body}");
    for twin in twins {
        assert_eq!(
            twin["connectivity"]["online"], true,
            "{} not live when the banner came",
            twin["id"]
        );
    }
    for lab in &labs {
        let line = banner
            .iter()
            .find(|l| l.contains(&format!("lab: {lab} ")))
            .expect("lab line");
        assert!(line.contains("1 CNC mills"), "{line}");
    }

    // Ctrl-C stops it cleanly.
    let mut child = demo.0.take().expect("running");
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
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
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.starts_with("Demolab stopped")),
        "{rest:#?}"
    );
    // Quiet by default: no INFO lines, nothing at all in a healthy run.
    let stderr = stderr.recv_timeout(DEADLINE).expect("stderr closed");
    assert!(!stderr.contains("INFO"), "{stderr}");
}
