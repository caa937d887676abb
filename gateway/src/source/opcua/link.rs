//! The IO shell: one client session per server, one subscription per machine, the session's
//! event loop polled here (so reconnects are seen and counted), changes translated to frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use opcua::client::transport::TcpConnector;
use opcua::client::{
    Client, ClientBuilder, DataChangeCallback, IdentityToken, Password, Session,
    SessionConnectMode, SessionEventLoop, SessionPollResult,
};
use opcua::types::{
    DataValue, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    NodeId as UaNodeId, ReadValueId, TimestampsToReturn,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config::OpcUaServer;
use super::translate::{Outcome, Translator};
use crate::source::{Inbound, SourceId};
use crate::stats::{DropReason, GatewayStats, OpcUaLinkEvent};

/// Changes waiting between the client's callback and this task. The callback runs inside the
/// session's event loop and must not wait, so a full queue drops (counted as `opcua_overflow`);
/// it fills only when the pipeline stalls for longer than this many changes.
const CHANGE_QUEUE: usize = 4096;
/// First wait after a failed connect; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Publishing intervals without a publish request before the server may drop a subscription.
/// Long enough (≥ 60 s at the default interval) that a short outage ends in a transfer.
const LIFETIME_COUNT: u32 = 120;
/// Empty publishing intervals before the server sends a keep-alive.
const KEEP_ALIVE_COUNT: u32 = 10;

#[derive(Debug)]
struct Change {
    machine: usize,
    metric: usize,
    value: DataValue,
}

/// Subscribes to every configured variable of `server` until `cancel` fires, delivering each
/// machine's `Hello` and `Samples` to `inbound` as its virtual node
/// ([`opcua_node_id`](super::opcua_node_id)).
///
/// The session reconnects by itself and resumes (or, after a server restart, recreates) the
/// subscriptions; changes it reports again are dropped by source timestamp. Link events are
/// counted in [`GatewayStats`] as [`OpcUaLinkEvent`]s, refused values as drops. A server that
/// fails validation is logged and not started. Returns early if `inbound` closes.
pub async fn run_opcua_server(
    server: OpcUaServer,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    cancel: CancellationToken,
) {
    if let Err(err) = server.validate() {
        error!(%err, "opcua server not started");
        return;
    }
    let identity = match identity(&server) {
        Ok(identity) => identity,
        Err(err) => {
            error!(server = %server.name, error = %err, "opcua client not started");
            return;
        }
    };
    let mut client = match client(&server) {
        Ok(client) => client,
        Err(errors) => {
            error!(server = %server.name, errors = ?errors, "opcua client not started");
            return;
        }
    };
    let mut link = Link {
        identity,
        translator: Translator::new(&server, boot_id(), crate::run::now_ms()),
        source: SourceId::OpcUa(server.name.clone()),
        server: Arc::new(server),
        inbound,
        stats,
    };
    cancel.run_until_cancelled(link.run(&mut client)).await;
}

fn client(server: &OpcUaServer) -> Result<Client, Vec<String>> {
    let mut builder = ClientBuilder::new()
        .application_name("Demolab gateway")
        .application_uri(format!("urn:demolab-gateway:{}", server.name))
        .product_uri("urn:demolab-gateway")
        .pki_dir(&server.pki_dir)
        .create_sample_keypair(true)
        .trust_server_certs(server.trust_server_certs)
        // Never give up: a machine switched off for the weekend comes back on Monday.
        .session_retry_limit(-1)
        .session_retry_initial(FIRST_BACKOFF)
        .session_retry_max(MAX_BACKOFF)
        .recreate_subscriptions(true);
    if let Some(path) = &server.certificate_file {
        builder = builder.certificate_path(path);
    }
    if let Some(path) = &server.private_key_file {
        builder = builder.private_key_path(path);
    }
    builder.client()
}

/// A session on the server's endpoint with the configured policy and mode, at the configured
/// URL. The library would connect to the host and port the server advertises; behind NAT or a
/// relay, or on a PLC that knows itself by an internal name, those are unreachable from here,
/// and a reconnect after a network blip would go there too.
async fn connect(
    client: &mut Client,
    server: &OpcUaServer,
    identity: IdentityToken,
) -> Result<(Arc<Session>, SessionEventLoop<TcpConnector>), opcua::types::Error> {
    let url = server.endpoint_url.as_str();
    let endpoints = client.get_server_endpoints_from_url(url).await?;
    let mut endpoint = Client::find_matching_endpoint(
        &endpoints,
        url,
        server.security_policy.to_ua(),
        server.security_mode.to_ua(),
    )
    .ok_or_else(|| {
        opcua::types::Error::new(
            opcua::types::StatusCode::BadSecurityPolicyRejected,
            format!(
                "the server offers no endpoint with policy {:?} and mode {:?}",
                server.security_policy, server.security_mode
            ),
        )
    })?;
    endpoint.endpoint_url = url.into();
    client
        .session_builder()
        .with_endpoints(endpoints)
        .connect_to_endpoint_directly(endpoint)?
        .user_identity_token(identity)
        .build(client.certificate_store().clone())
}

/// The session's identity: a user certificate, a user name, or anonymous (validated: at most
/// one). Relative certificate paths are under `pki_dir`.
fn identity(server: &OpcUaServer) -> Result<IdentityToken, String> {
    if let (Some(certificate), Some(key)) = (&server.user_certificate, &server.user_private_key) {
        let certificate = server.pki_dir.join(certificate);
        let key = server.pki_dir.join(key);
        return IdentityToken::new_x509_path(&certificate, &key).map_err(|err| {
            format!(
                "`user_certificate` {} or `user_private_key` {}: {err}",
                certificate.display(),
                key.display()
            )
        });
    }
    Ok(match (&server.username, &server.password) {
        (Some(user), Some(password)) => {
            IdentityToken::UserName(user.clone(), Password::new(password.0.clone()))
        }
        _ => IdentityToken::Anonymous,
    })
}

/// New for every gateway process, which is all a boot id needs.
fn boot_id() -> u32 {
    let now = crate::run::now_ms();
    (now ^ (now >> 32)) as u32
}

/// How one session ended.
enum Ended {
    /// It cannot go on; start a new one after a backoff.
    Failed,
    /// Nobody takes frames any more.
    InboundClosed,
}

#[derive(Debug)]
struct Link {
    server: Arc<OpcUaServer>,
    /// Read once: a certificate swapped on disk takes a restart, as the application's does.
    identity: IdentityToken,
    source: SourceId,
    translator: Translator,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
}

impl Link {
    async fn run(&mut self, client: &mut Client) {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u64;
        loop {
            match connect(client, &self.server, self.identity.clone()).await {
                Ok((session, event_loop)) => {
                    let (tx, rx) = mpsc::channel(CHANGE_QUEUE);
                    let ended = self.session(&session, event_loop, tx, rx).await;
                    if let Ended::InboundClosed = ended {
                        debug!(server = %self.server.name, "inbound channel closed; opcua source stops");
                        return;
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(err) => {
                    self.stats.opcua_link(OpcUaLinkEvent::ConnectFailed);
                    failures += 1;
                    if failures == 1 {
                        warn!(server = %self.server.name, url = %self.server.endpoint_url, error = %err,
                            "opcua server not reachable; retrying with backoff");
                    } else {
                        debug!(server = %self.server.name, error = %err, "opcua connect failed");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        }
    }

    /// Drives one session: its event loop, the subscription set-up, and the changes.
    async fn session(
        &mut self,
        session: &Arc<Session>,
        event_loop: SessionEventLoop<TcpConnector>,
        tx: mpsc::Sender<Change>,
        mut rx: mpsc::Receiver<Change>,
    ) -> Ended {
        let events = event_loop.enter();
        tokio::pin!(events);
        let setup = subscribe(session, self.server.clone(), tx, self.stats.clone());
        tokio::pin!(setup);
        let mut setting_up = true;
        let mut connected_before = false;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(SessionPollResult::Reconnected(mode))) => {
                        // async-opcua 0.19 builds a fresh publish loop per connection that only
                        // starts publishing on a trigger; the one its own subscription
                        // recreation fires comes before that loop exists, so without this a
                        // reconnected session receives nothing.
                        session.trigger_publish_now();
                        let resumed = matches!(mode, SessionConnectMode::ReactivatedSession(_));
                        self.connected(mode, connected_before);
                        if resumed {
                            // The server answers the publish requests still pending from the
                            // old connection into that dead connection, and async-opcua 0.19
                            // never republishes them: the changes of the first publishing
                            // intervals after a blip would be lost silently (measured). A new
                            // session starts clean: current values at once, then every change.
                            close(session, &mut events).await;
                            return Ended::Failed;
                        }
                        connected_before = true;
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                        self.stats.opcua_link(OpcUaLinkEvent::ConnectionLost);
                        warn!(server = %self.server.name, status = %code,
                            "opcua connection lost; the session reconnects");
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                        self.stats.opcua_link(OpcUaLinkEvent::ConnectFailed);
                        debug!(server = %self.server.name, status = %code, "opcua reconnect failed");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(code)) => {
                        warn!(server = %self.server.name, status = %code, "opcua session ended");
                        return Ended::Failed;
                    }
                    None => return Ended::Failed,
                },
                result = &mut setup, if setting_up => {
                    setting_up = false;
                    if let Err(err) = result {
                        error!(server = %self.server.name, error = %err,
                            "opcua subscriptions could not be created; starting a new session");
                        return Ended::Failed;
                    }
                }
                Some(change) = rx.recv() => {
                    if !self.change(change).await {
                        return Ended::InboundClosed;
                    }
                }
            }
        }
    }

    fn connected(&mut self, mode: SessionConnectMode, before: bool) {
        if !before {
            info!(server = %self.server.name, url = %self.server.endpoint_url, "opcua session up");
            return;
        }
        // The pipeline sees each reconnect as a Modbus one: a Hello, then seq goes on.
        self.translator.reconnected();
        match mode {
            SessionConnectMode::ReactivatedSession(_) => {
                self.stats.opcua_link(OpcUaLinkEvent::Resumed);
                info!(server = %self.server.name,
                    "opcua session reactivated; replacing it with a new one, which loses nothing after it");
            }
            SessionConnectMode::NewSession(_) => {
                self.stats.opcua_link(OpcUaLinkEvent::NewSession);
                info!(server = %self.server.name,
                    "opcua session recreated; subscriptions transferred or recreated");
            }
        }
    }

    /// Returns false once the pipeline has gone away.
    async fn change(&mut self, change: Change) -> bool {
        let now = crate::run::now_ms();
        match self
            .translator
            .change(change.machine, change.metric, &change.value, now)
        {
            Outcome::Frames {
                frames,
                taken_at_ms,
            } => {
                for frame in frames {
                    let inbound = Inbound {
                        source: self.source.clone(),
                        frame: Ok(frame),
                        taken_at_ms,
                    };
                    if self.inbound.send(inbound).await.is_err() {
                        return false;
                    }
                }
            }
            Outcome::Dropped(reason) => {
                self.stats.dropped(reason);
                let machine = self.server.machines.get(change.machine);
                debug!(server = %self.server.name,
                    machine = %machine.map(|m| m.machine.as_str()).unwrap_or("?"),
                    reason = reason.as_str(), status = ?change.value.status, "opcua value dropped");
            }
        }
        true
    }
}

/// Ends `session` on the server (its subscriptions with it), polling its event loop meanwhile,
/// which the request needs; gives up after a moment, when the server will time it out itself.
async fn close(
    session: &Session,
    events: &mut std::pin::Pin<
        &mut impl futures_util::Stream<Item = Result<SessionPollResult, opcua::types::StatusCode>>,
    >,
) {
    let disconnect = session.disconnect();
    tokio::pin!(disconnect);
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut disconnect => return,
            _ = &mut deadline => return,
            event = events.next() => if event.is_none() { return },
        }
    }
}

/// One subscription per machine, one monitored item per metric. Runs beside the event loop,
/// which must be polled for any request to complete.
async fn subscribe(
    session: &Session,
    server: Arc<OpcUaServer>,
    tx: mpsc::Sender<Change>,
    stats: Arc<GatewayStats>,
) -> Result<(), opcua::types::Error> {
    if !session.wait_for_connection().await {
        return Err(opcua::types::Error::new(
            opcua::types::StatusCode::BadNotConnected,
            "session closed before it connected",
        ));
    }
    for (m, machine) in server.machines.iter().enumerate() {
        // Validated: every node id parses.
        let nodes: Vec<UaNodeId> = machine
            .metrics
            .iter()
            .map(|metric| metric.node_id.parse().unwrap_or_default())
            .collect();
        let index: HashMap<UaNodeId, usize> = nodes.iter().cloned().zip(0..).collect();
        let tx = tx.clone();
        let stats = stats.clone();
        let callback = DataChangeCallback::new(move |value, item| {
            let Some(&metric) = index.get(&item.item_to_monitor().node_id) else {
                return;
            };
            if tx
                .try_send(Change {
                    machine: m,
                    metric,
                    value,
                })
                .is_err()
            {
                stats.dropped(DropReason::OpcUaOverflow);
            }
        });
        let subscription = session
            .create_subscription(
                Duration::from_millis(server.publishing_interval_ms),
                LIFETIME_COUNT,
                KEEP_ALIVE_COUNT,
                0,
                0,
                true,
                callback,
            )
            .await?;
        let items = nodes
            .iter()
            .map(|node| {
                MonitoredItemCreateRequest::new(
                    ReadValueId::from(node.clone()),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        sampling_interval: server.sampling_interval_ms as f64,
                        queue_size: server.queue_size,
                        discard_oldest: true,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let created = session
            .create_monitored_items(subscription, TimestampsToReturn::Both, items)
            .await?;
        for (metric, item) in machine.metrics.iter().zip(&created) {
            if item.result.status_code.is_bad() {
                error!(server = %server.name, machine = %machine.machine, node_id = %metric.node_id,
                    status = %item.result.status_code,
                    "opcua server refused to monitor this node; check the node id");
            } else if item.result.revised_queue_size < server.queue_size {
                // Changes faster than this many per publishing interval will be lost on the
                // server; worth knowing when a counter seems to skip.
                warn!(server = %server.name, machine = %machine.machine, node_id = %metric.node_id,
                    requested = server.queue_size, granted = item.result.revised_queue_size,
                    "opcua server shortened the change queue");
            }
        }
        info!(server = %server.name, machine = %machine.machine, items = created.len(),
            "opcua subscription created");
    }
    Ok(())
}
