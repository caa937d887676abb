//! Replays every kept fuzz input through its check under the normal test suite: the seed corpus
//! (`fuzz/seeds/<target>/`) and every input that once crashed a target
//! (`fuzz/regressions/<target>/`). CI runs this always; the fuzzing itself needs nightly.
//!
//! `DEMOLAB_WRITE_FUZZ_SEEDS=1 cargo test -p demolab-tests --test fuzz_regressions` rewrites the
//! generated seeds (golden frames, Sparkplug payloads, MQTT packets, the shipped configs).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use demolab_tests::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_passes_its_check() {
    if std::env::var_os("DEMOLAB_WRITE_FUZZ_SEEDS").is_some() {
        seeds::write(&fuzz_dir().join("seeds"));
    }
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name}/ holds no seed inputs");
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for file in seeds.iter().chain(&regressions) {
            let data = fs::read(file).expect("a readable input");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz checks failed on {failures:?}");
}

#[test]
fn every_target_has_a_libfuzzer_entry_point() {
    for (name, _) in TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&target).unwrap_or_default();
        assert!(
            text.contains(&format!("demolab_tests::fuzz::{name}(")),
            "{} does not call the check {name}",
            target.display()
        );
    }
}

/// Seed inputs built from the project's own golden data.
mod seeds {
    use std::fs;
    use std::path::Path;

    use firmware::mqtt::packet::{self, Publish, QoS};
    use prost::Message;
    use protocol::cobs::{MAX_WIRE_LEN, encode_framed};
    use protocol::golden;
    use protocol::sparkplug::{
        DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueKind,
    };

    fn put(dir: &Path, target: &str, name: &str, data: &[u8]) {
        let dir = dir.join(target);
        fs::create_dir_all(&dir).expect("a seed directory");
        fs::write(dir.join(name), data).expect("a seed file");
    }

    fn framed(frame: &protocol::Frame) -> Vec<u8> {
        let mut wire = [0u8; MAX_WIRE_LEN];
        encode_framed(frame, &mut wire)
            .expect("golden frames fit")
            .to_vec()
    }

    fn birth() -> Payload {
        let unit = PropertySet {
            keys: vec!["engUnit".into()],
            values: vec![PropertyValue {
                datatype: Some(DataType::String as u32),
                is_null: None,
                value: Some(PropertyValueKind::String("W".into())),
            }],
        };
        let mut power = Metric::new(DataType::Float, MetricValue::Float(1234.5))
            .named("spindle.power_w")
            .aliased(1);
        power.properties = Some(unit);
        Payload {
            timestamp: Some(1_764_201_600_000),
            seq: Some(1),
            metrics: vec![
                Metric::new(DataType::UInt32, MetricValue::Int(7))
                    .named("node.seq")
                    .aliased(0),
                Metric::new(DataType::UInt32, MetricValue::Int(3)).named("node.boot"),
                power,
            ],
            ..Default::default()
        }
    }

    pub fn write(dir: &Path) {
        for (frame, bytes) in golden::all() {
            let mut seed = vec![0u8];
            seed.extend_from_slice(bytes);
            put(dir, "frame", &format!("golden-{}", frame.kind()), &seed);
        }

        let mut stream = vec![0x05, 0x00];
        for (frame, _) in golden::all() {
            stream.extend(framed(&frame));
        }
        put(dir, "cobs_stream", "golden-stream", &stream);
        let mut noisy = vec![0x01, 0x00, 0x13, 0x37, 0x00];
        noisy.extend(framed(&golden::samples()));
        put(dir, "cobs_stream", "noise-then-samples", &noisy);

        let nbirth = Payload {
            timestamp: Some(1_764_201_600_000),
            seq: Some(0),
            metrics: vec![Metric::new(DataType::UInt64, MetricValue::Long(3)).named("bdSeq")],
            ..Default::default()
        };
        let ddata = Payload {
            timestamp: Some(1_764_201_601_000),
            seq: Some(2),
            metrics: vec![
                Metric::new(DataType::UInt32, MetricValue::Int(8)).aliased(0),
                Metric::new(DataType::Float, MetricValue::Float(1300.0))
                    .aliased(1)
                    .at(1_764_201_601_000),
            ],
            ..Default::default()
        };
        put(dir, "sparkplug_payload", "nbirth", &nbirth.encode_to_vec());
        put(dir, "sparkplug_payload", "dbirth", &birth().encode_to_vec());
        put(dir, "sparkplug_payload", "ddata", &ddata.encode_to_vec());

        for (name, topic) in [
            ("ddata", "spBv1.0/lab-a/DDATA/gw-a/mill-1"),
            ("nbirth", "spBv1.0/lab-a/NBIRTH/gw-a"),
            ("state", "spBv1.0/STATE/demolab-hub"),
            ("node-up", "demolab/v1/node/0123456789abcdef/up"),
            (
                "acl-match",
                "spBv1.0/lab-a/#\0spBv1.0/lab-a/DDATA/gw-a/mill-1",
            ),
        ] {
            put(dir, "sparkplug_topic", name, topic.as_bytes());
        }

        let mut publish = [0u8; 64];
        let publish = packet::encode_publish(
            &Publish {
                topic: "demolab/v1/node/0123456789abcdef/down",
                qos: QoS::AtLeastOnce,
                packet_id: Some(7),
                dup: false,
                retain: false,
                payload: &[1, 2, 3],
            },
            &mut publish,
        )
        .expect("fits");
        let mut session = vec![0x03, 0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x01];
        session.extend_from_slice(publish);
        session.extend_from_slice(&[0x40, 0x02, 0x00, 0x07, 0xD0, 0x00]);
        put(
            dir,
            "mqtt_packets",
            "connack-suback-publish-puback-pingresp",
            &session,
        );

        let root = dir.join("../..");
        for (target, file) in [
            ("gateway_toml", "deploy/gateway.toml"),
            ("hub_toml", "deploy/hub.toml"),
            ("access_toml", "deploy/access.toml"),
        ] {
            let text = fs::read(root.join(file)).expect("a shipped config");
            put(dir, target, "deploy", &text);
        }
        for entry in fs::read_dir(root.join("simulators/scenarios")).expect("scenarios") {
            let path = entry.expect("an entry").path();
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            put(
                dir,
                "scenario_toml",
                &name,
                &fs::read(&path).expect("a scenario"),
            );
        }
    }
}
