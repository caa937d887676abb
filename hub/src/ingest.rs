//! The IO shell of the primary host: one MQTT session that subscribes to `spBv1.0/#`, publishes
//! the retained `STATE` (with an offline Will), feeds [`PrimaryHost`] and applies its actions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use protocol::HostId;
use protocol::sparkplug::{
    DataType, MessageType, Metric, MetricValue, NAMESPACE, Payload, REBIRTH_METRIC, Topic,
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::host::{HostAction, PrimaryHost};
use crate::stats::HubStats;
use crate::twin::TwinRegistry;

const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Sparkplug 3.0 STATE payload (JSON, not protobuf).
pub fn state_payload(online: bool, timestamp: u64) -> Vec<u8> {
    format!("{{\"online\":{online},\"timestamp\":{timestamp}}}").into_bytes()
}

/// Where and as whom ingest connects.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The primary host id (STATE topic).
    pub host_id: HostId,
}

/// Runs ingest until `cancel` fires. Sets `ready` once subscribed and STATE is online.
pub async fn run(
    config: IngestConfig,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let state_topic = Topic::State {
        host: config.host_id.clone(),
    }
    .to_string();
    let mut options = MqttOptions::new(
        format!("{}-host", config.host_id),
        config.host.clone(),
        config.port,
    );
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_last_will(LastWill::new(
        state_topic.clone(),
        state_payload(false, now_ms()),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut events) = AsyncClient::new(options, 1024);
    let mut host = PrimaryHost::default();
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            () = cancel.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(err) = client.try_subscribe(format!("{NAMESPACE}/#"), QoS::AtLeastOnce) {
                    error!(%err, "cannot subscribe to Sparkplug topics");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Spec order: subscribe first, then announce online, so no birth is missed.
                if let Err(err) = client.try_publish(
                    &state_topic,
                    QoS::AtLeastOnce,
                    true,
                    state_payload(true, now_ms()),
                ) {
                    error!(%err, "cannot publish the host STATE");
                }
                ready.send_replace(true);
                info!(host_id = %config.host_id, "primary host online");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                for action in host.on_message(&publish.topic, &publish.payload, now_ms(), &stats) {
                    match action {
                        HostAction::Twin(update) => {
                            twins.apply(update);
                        }
                        HostAction::RequestRebirth { lab, gateway } => {
                            let topic = Topic::node(&lab, MessageType::NCmd, &gateway).to_string();
                            let payload = Payload {
                                timestamp: Some(now_ms()),
                                metrics: vec![
                                    Metric::new(DataType::Boolean, MetricValue::Boolean(true))
                                        .named(REBIRTH_METRIC),
                                ],
                                ..Default::default()
                            };
                            if let Err(err) = client.try_publish(
                                topic,
                                QoS::AtLeastOnce,
                                false,
                                payload.encode_to_vec(),
                            ) {
                                warn!(%lab, %gateway, %err, "cannot request a rebirth");
                            }
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                ready.send_replace(false);
                if cancel.is_cancelled() {
                    break;
                }
                warn!(%err, "hub MQTT connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
    // A clean stop announces offline itself, since a clean DISCONNECT suppresses the Will.
    let _ = client.try_publish(
        &state_topic,
        QoS::AtLeastOnce,
        true,
        state_payload(false, now_ms()),
    );
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
