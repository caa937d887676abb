use protocol::sparkplug::{PropertySet, PropertyValue};

use super::*;

/// What a message asks of the registry and the broker, without the bookkeeping actions (path
/// facts, acknowledgements) that other tests look at.
trait Updates {
    fn updates(self) -> Vec<HostAction>;
}

impl Updates for Vec<HostAction> {
    fn updates(self) -> Vec<HostAction> {
        self.into_iter()
            .filter(|a| !matches!(a, HostAction::Path(_) | HostAction::Acknowledge(_)))
            .collect()
    }
}

const T: &str = "spBv1.0/lab-a";

fn nbirth(bd_seq: u64) -> Vec<u8> {
    Payload {
        seq: Some(0),
        metrics: vec![
            Metric::new(DataType::UInt64, MetricValue::Long(bd_seq)).named(BD_SEQ_METRIC),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

fn dbirth(seq: u64) -> Vec<u8> {
    let mut power = Metric::new(DataType::Float, MetricValue::Float(0.0))
        .named("spindle.power_w")
        .aliased(2);
    power.properties = Some(PropertySet {
        keys: vec![UNIT_PROPERTY.into()],
        values: vec![PropertyValue {
            datatype: Some(12),
            is_null: None,
            value: Some(PropertyValueKind::String("W".into())),
        }],
    });
    Payload {
        seq: Some(seq),
        metrics: vec![
            Metric::new(DataType::UInt32, MetricValue::Int(0))
                .named(NODE_SEQ_METRIC)
                .aliased(1),
            power,
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

fn ddata(seq: u64, node_seq: u32, power: f32) -> Vec<u8> {
    Payload {
        seq: Some(seq),
        timestamp: Some(1000),
        metrics: vec![
            Metric::new(DataType::UInt32, MetricValue::Long(u64::from(node_seq))).aliased(1),
            Metric::new(DataType::Float, MetricValue::Float(power)).aliased(2),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

/// A host that admits any lab and machine, with the default caps.
fn open_host() -> PrimaryHost {
    PrimaryHost::new(HostPolicy {
        accept_unknown: true,
        ..HostPolicy::default()
    })
}

fn born_host(stats: &HubStats) -> PrimaryHost {
    let mut host = open_host();
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(4), 0, stats)
        .updates();
    let actions = host
        .on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, stats)
        .updates();
    assert!(
        matches!(&actions[..], [HostAction::Twin(TwinUpdate::Birth { metrics, .. })]
        if metrics == &[("spindle.power_w".parse().expect("valid"), Unit::Watt)])
    );
    host
}

#[test]
fn ddata_aliases_resolve_to_the_names_of_the_birth() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    let actions = host
        .on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(2, 7, 12.5),
            0,
            &stats,
        )
        .updates();
    assert!(
        matches!(&actions[..], [HostAction::Twin(TwinUpdate::Sample { seq: 7, values, timestamp: 1000, .. })]
        if values == &[("spindle.power_w".parse().expect("valid"), 12.5)])
    );
}

fn paths(actions: &[HostAction]) -> Vec<&PathFacts> {
    actions
        .iter()
        .filter_map(|a| match a {
            HostAction::Path(path) => Some(path),
            _ => None,
        })
        .collect()
}

#[test]
fn births_and_data_leave_the_sparkplug_facts_of_their_machine_before_its_update() {
    let stats = HubStats::default();
    let mut host = open_host();
    let node = host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(4), 0, &stats);
    assert!(paths(&node).is_empty(), "node messages name no machine");
    let actions = host.on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, &stats);
    let [
        HostAction::Path(birth),
        HostAction::Twin(TwinUpdate::Birth { .. }),
    ] = &actions[..]
    else {
        panic!("the facts, then the birth: {actions:?}");
    };
    assert_eq!(
        (birth.hop.message.as_str(), birth.hop.seq, birth.hop.bd_seq),
        ("DBIRTH", Some(1), Some(4))
    );
    assert_eq!(
        birth.birth,
        Some(([("spindle.power_w".to_owned(), 2)].into(), Some(1)))
    );
    let topic = format!("{T}/DDATA/gw-a/mill-1");
    let actions = host.on_message(&topic, &ddata(2, 7, 12.5), 0, &stats);
    let [
        HostAction::Path(data),
        HostAction::Twin(TwinUpdate::Sample { .. }),
    ] = &actions[..]
    else {
        panic!("the facts, then the sample: {actions:?}");
    };
    assert_eq!(
        (
            data.hop.topic.as_str(),
            data.hop.seq,
            data.hop.bd_seq,
            &data.birth
        ),
        (topic.as_str(), Some(2), Some(4), &None)
    );
}

/// The node sequences of the samples among `actions`, and the packet ids acknowledged, in order.
fn samples_and_acks(actions: &[HostAction]) -> (Vec<u32>, Vec<u16>) {
    let mut samples = Vec::new();
    let mut acks = Vec::new();
    for action in actions {
        match action {
            HostAction::Twin(TwinUpdate::Sample { seq, .. }) => samples.push(*seq),
            HostAction::Acknowledge(delivery) => acks.push(delivery.pkid),
            _ => {}
        }
    }
    (samples, acks)
}

/// DDATA with Sparkplug `seq`, `node.seq` ten times it, delivered with packet id `pkid`.
fn deliver(
    host: &mut PrimaryHost,
    seq: u64,
    pkid: u16,
    now: u64,
    stats: &HubStats,
) -> Vec<HostAction> {
    let delivery = Delivery {
        pkid,
        exactly_once: false,
    };
    let topic = format!("{T}/DDATA/gw-a/mill-1");
    host.receive(
        &topic,
        &ddata(seq, seq as u32 * 10, 1.0),
        Some(delivery),
        now,
        stats,
    )
}

#[test]
fn what_arrives_past_a_gap_waits_unacknowledged_and_goes_in_order_once_the_gap_fills() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    // The birth used seq 0 and 1: 2 is late, 3 and 4 overtake it.
    for seq in [3, 4] {
        let actions = deliver(&mut host, seq, 10 + seq as u16, 100, &stats);
        assert!(actions.is_empty(), "held, not acknowledged: {actions:?}");
    }
    let actions = deliver(&mut host, 2, 12, 200, &stats);
    assert_eq!(
        samples_and_acks(&actions),
        (vec![20, 30, 40], vec![12, 13, 14]),
        "in stream order, each acknowledged after its update"
    );
    assert_eq!((stats.reordered(), stats.seq_gaps()), (2, 0));
    assert!(
        host.tick(200 + 10 * REORDER_TIMEOUT_MS, &stats).is_empty(),
        "nothing left held"
    );
    // The stream goes on from 4.
    let next = deliver(&mut host, 5, 15, 300, &stats);
    assert_eq!(samples_and_acks(&next), (vec![50], vec![15]));
}

#[test]
fn a_gap_that_stays_open_past_the_reorder_timeout_is_a_loss_then_a_rebirth() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    // The birth used seq 0 and 1; 3 skips 2, and 5 skips 4.
    deliver(&mut host, 5, 5, 10_000, &stats);
    deliver(&mut host, 3, 3, 10_500, &stats);
    assert!(
        host.tick(10_000 + REORDER_TIMEOUT_MS - 1, &stats)
            .is_empty()
    );
    assert_eq!(stats.seq_gaps(), 0, "not a loss before the timeout");
    let actions = host.tick(10_000 + REORDER_TIMEOUT_MS, &stats);
    assert_eq!(
        samples_and_acks(&actions),
        (vec![30, 50], vec![3, 5]),
        "in stream order"
    );
    assert!(matches!(
        actions.last(),
        Some(HostAction::RequestRebirth { .. })
    ));
    assert_eq!(stats.seq_gaps(), 2, "two gaps, counted as losses");
    assert!(
        host.tick(20_000 + REORDER_TIMEOUT_MS, &stats).is_empty(),
        "asked once"
    );
    // The late one is behind the stream now: handled as it comes, and the stream stays at 5.
    let late = deliver(&mut host, 2, 2, 20_000, &stats);
    assert_eq!(samples_and_acks(&late), (vec![20], vec![2]));
    let next = deliver(&mut host, 6, 6, 20_000, &stats);
    assert_eq!(samples_and_acks(&next), (vec![60], vec![6]));
}

#[test]
fn while_the_stream_moves_a_stray_message_waits_for_its_place_without_a_rebirth() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    deliver(&mut host, 6, 6, 0, &stats);
    let mut order = Vec::new();
    for (i, seq) in (2..6).enumerate() {
        // Each step comes just before the timeout since the stream last moved.
        let now = (i as u64 + 1) * (REORDER_TIMEOUT_MS - 1);
        order.extend(host.tick(now, &stats));
        order.extend(deliver(&mut host, seq, seq as u16, now, &stats));
    }
    assert_eq!(
        samples_and_acks(&order),
        (vec![20, 30, 40, 50, 60], vec![2, 3, 4, 5, 6])
    );
    assert_eq!((stats.seq_gaps(), stats.rebirth_requests()), (0, 0));
}

#[test]
fn redelivered_messages_behind_the_stream_are_handled_without_moving_it() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    for seq in 2..5 {
        deliver(&mut host, seq, seq as u16, 0, &stats);
    }
    // A resumed session delivers 3 and 4 again, then goes on with 5.
    let mut actions = Vec::new();
    for seq in [3, 4, 5] {
        actions.extend(deliver(&mut host, seq, seq as u16, 0, &stats));
    }
    assert_eq!(
        samples_and_acks(&actions),
        (vec![30, 40, 50], vec![3, 4, 5])
    );
    assert_eq!((stats.seq_gaps(), stats.reordered()), (0, 0));
}

#[test]
fn held_messages_are_forgotten_unacknowledged_when_the_connection_is_lost() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    deliver(&mut host, 3, 3, 0, &stats);
    deliver(&mut host, 4, 4, 0, &stats);
    assert_eq!(host.forget_held(), 2);
    // Delivered again on the resumed session, with the one they waited for first.
    let mut actions = Vec::new();
    for seq in [2, 3, 4] {
        actions.extend(deliver(&mut host, seq, 100 + seq as u16, 0, &stats));
    }
    assert_eq!(
        samples_and_acks(&actions),
        (vec![20, 30, 40], vec![102, 103, 104])
    );
    assert!(host.tick(10 * REORDER_TIMEOUT_MS, &stats).is_empty());
}

#[test]
fn a_new_birth_comes_after_what_its_node_sent_before() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    deliver(&mut host, 3, 3, 0, &stats);
    let birth = Delivery {
        pkid: 50,
        exactly_once: false,
    };
    let actions = host.receive(
        &format!("{T}/NBIRTH/gw-a"),
        &nbirth(5),
        Some(birth),
        0,
        &stats,
    );
    assert_eq!(samples_and_acks(&actions), (vec![30], vec![3, 50]));
    assert_eq!(stats.seq_gaps(), 1, "2 never came");
}

#[test]
fn sessions_survive_a_snapshot_so_queued_data_decodes_after_a_restart() {
    let stats = HubStats::default();
    let host = born_host(&stats);
    let json = serde_json::to_string(&host.snapshot()).expect("serialises");
    let mut restored = open_host();
    restored.restore(serde_json::from_str(&json).expect("parses"));
    assert_eq!(restored.snapshot(), host.snapshot());
    let actions = restored
        .on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(9, 7, 12.5),
            0,
            &stats,
        )
        .updates();
    assert!(
        matches!(
            &actions[..],
            [HostAction::Twin(TwinUpdate::Sample { seq: 7, .. })]
        ),
        "aliases resolve without a new birth: {actions:?}"
    );
    assert_eq!(stats.seq_gaps(), 0, "no false gap after the restart");
}

#[test]
fn data_before_any_birth_requests_one_rebirth() {
    let stats = HubStats::default();
    let mut host = open_host();
    let topic = format!("{T}/DDATA/gw-a/mill-1");
    let first = host
        .on_message(&topic, &ddata(5, 1, 1.0), 0, &stats)
        .updates();
    assert!(matches!(&first[..], [HostAction::RequestRebirth { .. }]));
    assert!(
        host.on_message(&topic, &ddata(6, 2, 1.0), 0, &stats)
            .updates()
            .is_empty()
    );
    assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 2);
}

#[test]
fn ndeath_of_the_current_session_takes_devices_offline_and_an_old_one_is_ignored() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    let death = |bd: u64| {
        Payload {
            metrics: vec![
                Metric::new(DataType::UInt64, MetricValue::Long(bd)).named(BD_SEQ_METRIC),
            ],
            ..Default::default()
        }
        .encode_to_vec()
    };
    assert!(
        host.on_message(&format!("{T}/NDEATH/gw-a"), &death(3), 0, &stats)
            .updates()
            .is_empty()
    );
    assert_eq!(stats.dropped(IngestDrop::BdSeqMismatch), 1);
    let actions = host
        .on_message(&format!("{T}/NDEATH/gw-a"), &death(4), 0, &stats)
        .updates();
    assert!(matches!(
        &actions[..],
        [HostAction::Twin(TwinUpdate::Offline { .. })]
    ));
}

#[test]
fn seq_gaps_are_counted() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    host.on_message(
        &format!("{T}/DDATA/gw-a/mill-1"),
        &ddata(5, 1, 1.0),
        0,
        &stats,
    )
    .updates();
    host.tick(REORDER_TIMEOUT_MS, &stats);
    assert_eq!(
        stats
            .render(0, 0)
            .lines()
            .find(|l| l.starts_with("demolab_hub_seq_gaps_total ")),
        Some("demolab_hub_seq_gaps_total 1")
    );
}

#[test]
fn bad_topics_and_payloads_are_counted_not_fatal() {
    let stats = HubStats::default();
    let mut host = open_host();
    host.on_message("spBv1.0/Lab/NBIRTH/g", &[], 0, &stats)
        .updates();
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &[0xFF, 0xFF], 0, &stats)
        .updates();
    assert_eq!(stats.dropped(IngestDrop::BadTopic), 1);
    assert_eq!(stats.dropped(IngestDrop::BadPayload), 1);
}

fn closed_host(labs: Vec<crate::directory::LabConfig>, limits: Limits) -> PrimaryHost {
    let directory = Directory::new(crate::catalogue::Catalogue::builtin(), labs, vec![])
        .expect("valid directory");
    PrimaryHost::new(HostPolicy {
        directory: Arc::new(directory),
        accept_unknown: false,
        limits,
    })
}

fn lab_a(machines: &[&str]) -> crate::directory::LabConfig {
    crate::directory::LabConfig {
        id: "lab-a".parse().expect("valid"),
        name: String::new(),
        location: String::new(),
        gateways: vec!["gw-a".parse().expect("valid")],
        machines: machines
            .iter()
            .map(|m| crate::directory::MachineConfig {
                id: m.parse().expect("valid"),
                kind: None,
                name: None,
                line: None,
                attributes: Default::default(),
            })
            .collect(),
        accept_new_machines: false,
    }
}

fn birth_with(metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        seq: Some(1),
        metrics,
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn oversized_topics_and_payloads_are_counted_before_anything_is_parsed() {
    let stats = HubStats::default();
    let limits = Limits::default();
    let mut host = open_host();
    let long_topic = format!("{T}/NBIRTH/{}", "g".repeat(60_000));
    assert!(
        host.on_message(&long_topic, &nbirth(1), 0, &stats)
            .updates()
            .is_empty()
    );
    let big = vec![0u8; limits.max_payload_bytes + 1];
    assert!(
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &big, 0, &stats)
            .updates()
            .is_empty()
    );
    assert_eq!(stats.dropped(IngestDrop::TopicTooLong), 1);
    assert_eq!(stats.dropped(IngestDrop::PayloadTooLarge), 1);
    assert_eq!(stats.dropped(IngestDrop::BadTopic), 0, "never parsed");
    assert_eq!(stats.dropped(IngestDrop::BadPayload), 0, "never decoded");
}

#[test]
fn births_of_labs_and_machines_the_directory_does_not_list_are_refused_without_rebirth_loops() {
    let stats = HubStats::default();
    let mut host = closed_host(vec![lab_a(&["mill-1"])], Limits::default());
    // An unknown lab gets no session at all.
    let unknown = "spBv1.0/lab-x";
    assert!(
        host.on_message(&format!("{unknown}/NBIRTH/gw-x"), &nbirth(1), 0, &stats)
            .updates()
            .is_empty()
    );
    assert!(
        host.on_message(&format!("{unknown}/DBIRTH/gw-x/m"), &dbirth(1), 0, &stats)
            .updates()
            .is_empty()
    );
    assert_eq!(stats.dropped(IngestDrop::UnknownLab), 2);
    assert!(host.snapshot().edges.is_empty());
    // A listed lab's unlisted machine is refused, and so is its data, quietly.
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats)
        .updates();
    let listed = host
        .on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, &stats)
        .updates();
    assert!(matches!(
        &listed[..],
        [HostAction::Twin(TwinUpdate::Birth { .. })]
    ));
    let ghost = host
        .on_message(&format!("{T}/DBIRTH/gw-a/ghost-1"), &dbirth(2), 0, &stats)
        .updates();
    assert!(ghost.is_empty());
    let data = host
        .on_message(
            &format!("{T}/DDATA/gw-a/ghost-1"),
            &ddata(3, 1, 1.0),
            0,
            &stats,
        )
        .updates();
    assert!(data.is_empty(), "no rebirth request: {data:?}");
    assert_eq!(stats.dropped(IngestDrop::UnknownMachine), 2);
    assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 0);
    // A gateway the lab does not list.
    host.on_message(&format!("{T}/NBIRTH/gw-evil"), &nbirth(1), 0, &stats)
        .updates();
    assert_eq!(stats.dropped(IngestDrop::UnregisteredGateway), 1);
}

#[test]
fn a_birth_keeps_at_most_the_cap_of_metrics_and_counts_long_names_and_strings() {
    let stats = HubStats::default();
    let limits = Limits {
        max_metrics_per_device: 3,
        max_string_len: 8,
        max_metric_name_len: 12,
        ..Limits::default()
    };
    let mut host = closed_host(vec![lab_a(&["mill-1"])], limits);
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats)
        .updates();
    let mut metrics: Vec<Metric> = (0..10)
        .map(|i| {
            Metric::new(DataType::Float, MetricValue::Float(0.0))
                .named(format!("f.m{i}"))
                .aliased(10 + i)
        })
        .collect();
    metrics.push(Metric::new(DataType::Float, MetricValue::Float(0.0)).named("long.name_too_far"));
    metrics.push(Metric::new(DataType::String, MetricValue::String("x".repeat(9))).named("f.text"));
    metrics.push(Metric::new(DataType::Float, MetricValue::Float(0.0)).named("Bad.Name"));
    let actions = host
        .on_message(
            &format!("{T}/DBIRTH/gw-a/mill-1"),
            &birth_with(metrics),
            0,
            &stats,
        )
        .updates();
    let [HostAction::Twin(TwinUpdate::Birth { metrics, .. })] = &actions[..] else {
        panic!("a birth: {actions:?}")
    };
    assert_eq!(metrics.len(), 3);
    assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 7);
    assert_eq!(stats.dropped(IngestDrop::MetricNameTooLong), 1);
    assert_eq!(stats.dropped(IngestDrop::StringTooLong), 1);
    assert_eq!(stats.dropped(IngestDrop::InvalidMetricName), 1);
    // Data can name no more than the cap either.
    let data = Payload {
        seq: Some(2),
        metrics: (0..5)
            .map(|i| {
                Metric::new(DataType::Double, MetricValue::Double(1.0)).named(format!("g.n{i}"))
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let actions = host
        .on_message(&format!("{T}/DDATA/gw-a/mill-1"), &data, 0, &stats)
        .updates();
    assert!(
        matches!(&actions[..], [HostAction::Twin(TwinUpdate::Properties { values, .. })] if values.len() == 3)
    );
    assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 9);
}

#[test]
fn devices_per_edge_node_and_edge_nodes_are_capped() {
    let stats = HubStats::default();
    let limits = Limits {
        max_devices_per_edge: 2,
        max_edge_nodes: 2,
        ..Limits::default()
    };
    let mut host = PrimaryHost::new(HostPolicy {
        accept_unknown: true,
        limits,
        ..HostPolicy::default()
    });
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats)
        .updates();
    for machine in ["m-1", "m-2", "m-3", "m-4"] {
        host.on_message(&format!("{T}/DBIRTH/gw-a/{machine}"), &dbirth(1), 0, &stats)
            .updates();
    }
    assert_eq!(stats.dropped(IngestDrop::TooManyDevices), 2);
    // Data of a device past the cap asks for no rebirth: it could not be born anyway.
    let data = host
        .on_message(&format!("{T}/DDATA/gw-a/m-9"), &ddata(2, 1, 1.0), 0, &stats)
        .updates();
    assert!(data.is_empty());
    assert_eq!(stats.dropped(IngestDrop::TooManyDevices), 3);
    host.on_message(&format!("{T}/NBIRTH/gw-b"), &nbirth(1), 0, &stats)
        .updates();
    host.on_message(&format!("{T}/NBIRTH/gw-c"), &nbirth(1), 0, &stats)
        .updates();
    assert_eq!(stats.dropped(IngestDrop::TooManyEdgeNodes), 1);
    assert_eq!(host.snapshot().edges.len(), 2);
}

#[test]
fn a_forged_ndeath_or_a_birth_without_bd_seq_changes_nothing() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    let forged = Payload {
        metrics: vec![Metric::new(DataType::UInt64, MetricValue::Long(99)).named(BD_SEQ_METRIC)],
        ..Default::default()
    }
    .encode_to_vec();
    assert!(
        host.on_message(&format!("{T}/NDEATH/gw-a"), &forged, 0, &stats)
            .updates()
            .is_empty()
    );
    let bare = Payload::default().encode_to_vec();
    assert!(
        host.on_message(&format!("{T}/NDEATH/gw-a"), &bare, 0, &stats)
            .updates()
            .is_empty()
    );
    assert_eq!(stats.dropped(IngestDrop::BdSeqMismatch), 2);
    let actions = host
        .on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(2, 1, 1.0),
            0,
            &stats,
        )
        .updates();
    assert!(matches!(
        &actions[..],
        [HostAction::Twin(TwinUpdate::Sample { .. })]
    ));
    host.on_message(&format!("{T}/NBIRTH/gw-b"), &bare, 0, &stats)
        .updates();
    assert_eq!(stats.dropped(IngestDrop::MissingBdSeq), 1);
}

#[test]
fn a_node_seq_jump_asks_its_edge_node_for_one_rebirth_until_it_is_born_again() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    let (lab, gw) = (
        "lab-a".parse().expect("valid"),
        "gw-a".parse().expect("valid"),
    );
    let first = host.seq_jump(&lab, &gw, 0, &stats);
    assert!(matches!(&first[..], [HostAction::RequestRebirth { .. }]));
    assert!(host.seq_jump(&lab, &gw, 0, &stats).is_empty(), "asked once");
    host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(5), 0, &stats)
        .updates();
    assert_eq!(host.seq_jump(&lab, &gw, 0, &stats).len(), 1);
}

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_flood_of_oversized_and_invalid_topics_writes_one_short_line_per_reason() {
    let stats = HubStats::with_log_interval(10_000);
    let mut host = open_host();
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let oversized = format!("{T}/NBIRTH/{}", "g".repeat(60_000));
    let invalid = format!("spBv1.0/{}/NBIRTH/gw-a", "X".repeat(200));
    tracing::subscriber::with_default(subscriber, || {
        for n in 0..500 {
            host.on_message(&oversized, &nbirth(1), n, &stats).updates();
            host.on_message(&invalid, &nbirth(1), n, &stats).updates();
        }
    });
    assert_eq!(stats.dropped(IngestDrop::TopicTooLong), 500);
    assert_eq!(stats.dropped(IngestDrop::BadTopic), 500);
    let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("UTF-8");
    assert_eq!(text.lines().count(), 2, "{text}");
    // 500 × 60 KB of topics echoed whole used to be 30 MB of log.
    assert!(text.len() < 1_200, "{} bytes: {text}", text.len());
    let cut = format!("… ({} bytes)", oversized.len());
    assert!(text.contains(&cut), "{text}");
}

#[test]
fn a_single_forged_sparkplug_seq_neither_moves_the_sequence_nor_asks_for_a_rebirth() {
    let stats = HubStats::default();
    let mut host = born_host(&stats);
    let topic = format!("{T}/DDATA/gw-a/mill-1");
    host.on_message(&topic, &ddata(2, 1, 1.0), 0, &stats)
        .updates();
    host.on_message(&topic, &ddata(200, 2, 1.0), 0, &stats)
        .updates();
    // The real edge node goes on from 2.
    host.on_message(&topic, &ddata(3, 3, 1.0), 0, &stats)
        .updates();
    host.on_message(&topic, &ddata(4, 4, 1.0), 0, &stats)
        .updates();
    // Half the seq circle behind the stream, it is taken for a redelivery: handled (the twin
    // drops what its node.seq already counted), neither a gap nor a move.
    assert_eq!(stats.seq_gaps(), 0);
    assert!(host.tick(REORDER_TIMEOUT_MS * 10, &stats).is_empty());
    // A real loss: 6 and 7 follow each other after 5 went missing.
    host.on_message(&topic, &ddata(6, 5, 1.0), 0, &stats)
        .updates();
    host.on_message(&topic, &ddata(7, 6, 1.0), 0, &stats)
        .updates();
    host.on_message(&topic, &ddata(8, 7, 1.0), 0, &stats)
        .updates();
    assert_eq!(stats.seq_gaps(), 0, "held, not yet a loss");
    let actions = host.tick(REORDER_TIMEOUT_MS, &stats);
    assert_eq!(stats.seq_gaps(), 1);
    assert!(matches!(
        actions.updates().last(),
        Some(HostAction::RequestRebirth { .. })
    ));
}
