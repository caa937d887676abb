//! The hub's Sparkplug primary host fed sequences of (topic, payload) from anyone on the broker.

use std::sync::{Arc, OnceLock};

use arbitrary::{Result, Unstructured};
use hub::catalogue::Catalogue;
use hub::directory::{Directory, LabConfig};
use hub::host::{Delivery, HostAction, HostPolicy, HostSnapshot, PrimaryHost};
use hub::limits::Limits;
use hub::stats::HubStats;
use hub::twin::TwinRegistry;
use prost::Message;
use protocol::sparkplug::{
    DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueKind,
};

/// Labs, gateways, machines and metric names the generator mostly picks from, so messages meet
/// each other's sessions; an arbitrary string now and then covers the rest.
const LABS: &[&str] = &["lab-a", "lab-b"];
const GATEWAYS: &[&str] = &["gw-a", "gw-b"];
const MACHINES: &[&str] = &["mill-1", "lathe-2"];
const KINDS: &[&str] = &[
    "NBIRTH", "NDEATH", "NDATA", "NCMD", "DBIRTH", "DDEATH", "DDATA", "DCMD", "STATE",
];
const METRICS: &[&str] = &[
    "bdSeq",
    "node.seq",
    "node.boot",
    "spindle.power_w",
    "spindle.speed_rpm",
    "Node Control/Rebirth",
];

fn pick(u: &mut Unstructured<'_>, known: &[&str]) -> Result<String> {
    // One time in eight, anything at all.
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    Ok((*u.choose(known)?).to_owned())
}

fn topic(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 16)? {
        return u.arbitrary();
    }
    let kind = pick(u, KINDS)?;
    if kind == "STATE" {
        return Ok(format!("spBv1.0/STATE/{}", pick(u, &["demolab-hub"])?));
    }
    let mut topic = format!("spBv1.0/{}/{kind}/{}", pick(u, LABS)?, pick(u, GATEWAYS)?);
    if kind.starts_with('D') || u.ratio(1, 16)? {
        topic.push('/');
        topic.push_str(&pick(u, MACHINES)?);
    }
    Ok(topic)
}

fn value(u: &mut Unstructured<'_>) -> Result<Option<MetricValue>> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => None,
        1 => Some(MetricValue::Int(u.arbitrary()?)),
        2 => Some(MetricValue::Long(u.arbitrary()?)),
        3 => Some(MetricValue::Float(u.arbitrary()?)),
        4 => Some(MetricValue::Double(u.arbitrary()?)),
        5 => Some(MetricValue::Boolean(u.arbitrary()?)),
        6 => Some(MetricValue::String(u.arbitrary()?)),
        _ => Some(MetricValue::Bytes(u.arbitrary()?)),
    })
}

fn metric(u: &mut Unstructured<'_>) -> Result<Metric> {
    let properties = if u.ratio(1, 4)? {
        Some(PropertySet {
            keys: vec![pick(u, &["engUnit"])?],
            values: vec![PropertyValue {
                datatype: Some(DataType::String as u32),
                is_null: None,
                value: Some(PropertyValueKind::String(pick(u, &["W", "rpm", "°C"])?)),
            }],
        })
    } else {
        None
    };
    Ok(Metric {
        name: if u.ratio(3, 4)? {
            Some(pick(u, METRICS)?)
        } else {
            None
        },
        alias: if u.arbitrary()? {
            Some(u.int_in_range(0..=4)?)
        } else {
            None
        },
        timestamp: u.arbitrary()?,
        datatype: if u.arbitrary()? {
            Some(u.int_in_range(0..=22)?)
        } else {
            None
        },
        is_historical: u.arbitrary()?,
        value: value(u)?,
        properties,
        ..Default::default()
    })
}

fn payload(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let count = u.int_in_range(0..=6)?;
    let metrics = (0..count).map(|_| metric(u)).collect::<Result<_>>()?;
    let payload = Payload {
        timestamp: u.arbitrary()?,
        metrics,
        // Mostly near each other, so gaps and repeats both happen.
        seq: if u.ratio(7, 8)? {
            Some(u.int_in_range(0..=260)?)
        } else {
            u.arbitrary()?
        },
        ..Default::default()
    };
    Ok(payload.encode_to_vec())
}

/// A snapshot as JSON with every list sorted: the host keeps its sessions in hash maps, so list
/// order means nothing.
fn canonical(snapshot: &HostSnapshot) -> serde_json::Value {
    fn sort(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(sort);
                items.sort_by_key(|item| item.to_string());
            }
            serde_json::Value::Object(fields) => fields.values_mut().for_each(sort),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(snapshot).expect("a snapshot serialises");
    sort(&mut value);
    value
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    // Parsing the built-in catalogue per input would cost more than the host itself.
    static OPEN: OnceLock<Arc<Directory>> = OnceLock::new();
    static LISTED: OnceLock<Arc<Directory>> = OnceLock::new();
    let directory = if u.arbitrary()? {
        // lab-a admits only gw-a; other labs are admitted as unknown ones.
        LISTED
            .get_or_init(|| {
                let lab = LabConfig {
                    id: "lab-a".parse().expect("valid lab id"),
                    name: String::new(),
                    location: String::new(),
                    gateways: vec!["gw-a".parse().expect("valid gateway id")],
                    machines: Vec::new(),
                    accept_new_machines: true,
                };
                Arc::new(
                    Directory::new(Catalogue::builtin(), vec![lab], Vec::new())
                        .expect("a directory"),
                )
            })
            .clone()
    } else {
        OPEN.get_or_init(Arc::default).clone()
    };
    let stats = Arc::new(HubStats::default());
    let twins = TwinRegistry::new(stats.clone(), directory.clone());
    let policy = HostPolicy {
        directory,
        accept_unknown: true,
        limits: Limits::default(),
    };
    let mut host = PrimaryHost::new(policy.clone());
    let mut now_ms: u64 = 1_764_201_600_000;
    let mut messages = 0u64;
    // Every delivery comes back once, as an acknowledgement or forgotten with the connection.
    let mut handed_back: Vec<bool> = Vec::new();
    // Packet ids are 16 bits: a longer input stops where they would repeat.
    while !u.is_empty() && handed_back.len() < usize::from(u16::MAX) {
        match u.int_in_range(0..=15u8)? {
            0 => {
                now_ms = now_ms.saturating_add(u.int_in_range(0..=5_000)?);
                perform(host.tick(now_ms, &stats), &twins, &mut handed_back);
            }
            1 => {
                // A hub restart: the sessions go through their persisted form, and what was
                // held is delivered again to the new process.
                forget(&mut host, &mut handed_back);
                let snapshot = host.snapshot();
                let json = serde_json::to_vec(&snapshot).expect("a snapshot serialises");
                let read: HostSnapshot =
                    serde_json::from_slice(&json).expect("a snapshot reads back");
                // Restarted with the same configuration, which admits what it admitted before.
                let mut restarted = PrimaryHost::new(policy.clone());
                restarted.restore(read);
                assert_eq!(
                    canonical(&restarted.snapshot()),
                    canonical(&snapshot),
                    "a restored host has the sessions it was saved with"
                );
                host = restarted;
            }
            _ => {
                let topic = topic(u)?;
                let payload = payload(u)?;
                now_ms = now_ms.saturating_add(u.int_in_range(0..=100)?);
                let delivery = Delivery {
                    pkid: handed_back.len() as u16,
                    exactly_once: false,
                };
                handed_back.push(false);
                let actions = host.receive(&topic, &payload, Some(delivery), now_ms, &stats);
                messages += 1;
                perform(actions, &twins, &mut handed_back);
            }
        }
    }
    assert_eq!(
        stats.messages_received(),
        messages,
        "every message is counted"
    );
    forget(&mut host, &mut handed_back);
    assert!(
        handed_back.iter().all(|back| *back),
        "every delivery is acknowledged or forgotten"
    );
    Ok(())
}

/// A lost connection: what the host held comes back as forgotten (the broker delivers it again).
fn forget(host: &mut PrimaryHost, handed_back: &mut [bool]) {
    let held = handed_back.iter().filter(|back| !**back).count();
    assert_eq!(host.forget_held(), held, "only held messages wait");
    handed_back.iter_mut().for_each(|back| *back = true);
}

fn perform(actions: Vec<HostAction>, twins: &TwinRegistry, handed_back: &mut [bool]) {
    for action in actions {
        match action {
            HostAction::Twin(update) => {
                let _ = twins.apply(update);
            }
            HostAction::Path(path) => twins.record_path(path, 0),
            HostAction::Acknowledge(delivery) => {
                let back = &mut handed_back[usize::from(delivery.pkid)];
                assert!(!*back, "delivery {} acknowledged twice", delivery.pkid);
                *back = true;
            }
            HostAction::RequestRebirth { .. } => {}
        }
    }
}

/// The Sparkplug host state machine with the twin registry behind it, driven by a generated
/// sequence of messages, clock ticks and restarts. Checks: no panic, every message counted,
/// a saved and restored host holds the same sessions.
pub fn sparkplug_host(data: &[u8]) {
    let mut u = Unstructured::new(data);
    // Running out of input mid-message just ends the sequence.
    let _ = run(&mut u);
}
