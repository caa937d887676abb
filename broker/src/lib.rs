//! The embedded MQTT broker of Demolab.
//!
//! The hub embeds a broker so that the all-in-one demo needs nothing installed:
//! gateways, simulators and the hub's own Sparkplug host all talk to this one. A
//! lab gateway embeds one too when the lab has no broker for its network nodes.
//! In production a real broker (Mosquitto, EMQX, ...) takes its place purely by
//! configuration, so the hub must never depend on broker internals: only this
//! module names `mqtt5`, behind a small API (start / local address / shutdown),
//! keeping the implementation swappable.
//!
//! Without an access configuration clients are anonymous and may use any topic
//! (the all-in-one demo). With one ([`BrokerConfig::access`], see [`access`])
//! every CONNECT must carry a known username and its password, and every
//! publish, Will and subscription is checked against that user's grants through
//! mqtt5's `AuthProvider` hooks; refusals are counted in [`DenialCounters`].
//! The same configuration generates Mosquitto's files
//! ([`access::mosquitto`], the `demolab-broker-files` binary), and
//! `tests/tests/broker_conformance.rs` runs one suite against both brokers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let access = demolab_broker::access::AccessConfig::load("deploy/access.toml".as_ref())?;
//! let broker = demolab_broker::EmbeddedBroker::start(demolab_broker::BrokerConfig {
//!     access: Some(access),
//!     ..demolab_broker::BrokerConfig::default()
//! })
//! .await?;
//! let metrics = broker.denials().render_prometheus();
//! # Ok(()) }
//! ```
//!
//! How a refusal looks to a client differs from Mosquitto's: a denied QoS 1
//! publish is answered with an MQTT 5 style PUBACK (reason code 0x87) even to
//! a 3.1.1 client, for which that packet is malformed. Strict 3.1.1 clients
//! drop the connection; rumqttc 0.25 reads it as a plain PUBACK, so the
//! message is silently lost. A denied QoS 0 publish is silently dropped.
//! A denied subscription gets SUBACK 0x80 (Mosquitto 2.0 grants it and then
//! delivers nothing). Either way 3.1.1 devices cannot see a refusal as a soft
//! failure.

pub mod access;
mod enforce;
pub mod throttle;
pub mod tls;
mod tls_front;

pub use tls_front::TlsCounters;

pub use enforce::{DenialCounters, Denials};

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mqtt5::broker::auth::RateLimitedAuthProvider;
use mqtt5::broker::config::{StorageBackend, StorageConfig};
use mqtt5::broker::{BrokerShutdownHandle, MqttBroker};
use tokio::task::JoinHandle;

/// The largest "remaining length" MQTT can encode. mqtt5's default
/// `max_packet_size` (268_435_456) is one above it and is advertised as-is in
/// the CONNACK, where some MQTT 5 clients reportedly reject it (rumqttc 0.25
/// accepts it), so values are capped here.
const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;

/// mqtt5 refuses anything smaller (`BrokerConfig::validate`).
const MQTT5_MIN_PACKET_SIZE: u32 = 1024;

/// mqtt5 already bounds its own drain to 5 s; this only guards against a bug
/// there turning `shutdown` into a hang.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Settings of the embedded broker. Everything but `bind` has a default that
/// suits the demo.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where to listen for plain MQTT over TCP. Port 0 picks a free port (see
    /// [`EmbeddedBroker::local_addr`]). The default is loopback only, because
    /// clients are anonymous unless `access` is set.
    pub bind: SocketAddr,
    /// Largest MQTT packet (whole packet, header included) accepted from a
    /// client; advertised to MQTT 5 clients in the CONNACK so they never send
    /// more. Must lie in 1024..=268_435_455.
    pub max_packet_size: u32,
    /// Messages waiting for one client (behind its in-flight window) before the
    /// broker starts dropping that client's *oldest* queued messages.
    pub max_queued_messages_per_client: usize,
    /// Byte budget of the same per-client queue; whichever limit is hit first
    /// applies.
    pub max_queued_bytes_per_client: usize,
    /// QoS 1 messages sent to one client and not yet acknowledged by it. The
    /// hub acknowledges only what is on disk, in group commits, so its rate
    /// is at most this window per commit time.
    pub max_outbound_inflight: u16,
    /// Who may connect and which topics each may use. `None` keeps the broker
    /// open to anonymous clients on every topic (the demo); `Some` refuses
    /// anonymous clients.
    pub access: Option<access::AccessConfig>,
    /// Logins by token besides `access` (the hub's game teams); used only with `access`.
    pub token_logins: Option<Arc<dyn access::TokenLogins>>,
    /// A TLS listener beside the plain one. To serve the network over TLS only, bind the plain
    /// listener to loopback (the hub's own clients use it) and this one to the network.
    pub tls: Option<BrokerTls>,
}

/// The embedded broker's TLS listener (MQTT over TLS, usually port 8883). It terminates TLS
/// and forwards to the plain listener on loopback (see `tls_front.rs` for why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTls {
    /// Where to listen; port 0 picks a free port (see [`EmbeddedBroker::tls_local_addr`]).
    pub bind: SocketAddr,
    /// Certificate chain, key and optional client CA (mutual TLS).
    pub files: tls::ServerTlsFiles,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// TLS connections open at most; more are closed at once and counted.
    pub max_connections: usize,
}

impl BrokerTls {
    /// A listener on `bind` with the default handshake timeout (10 s) and cap (4096).
    pub fn new(bind: SocketAddr, files: tls::ServerTlsFiles) -> Self {
        Self {
            bind,
            files,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            // Sparkplug births are the largest payloads we carry and stay far
            // below this; a small cap keeps a misbehaving client from making
            // the broker buffer hundreds of megabytes.
            max_packet_size: 1024 * 1024,
            // mqtt5's default is 10 000; a hub or dashboard that stalls for a
            // few seconds while a whole lab reports must not lose QoS 1 data.
            max_queued_messages_per_client: 100_000,
            max_queued_bytes_per_client: 64 * 1024 * 1024,
            // mqtt5's default is 64: a commit of a few milliseconds then caps the
            // hub at some 20 000 messages a second, however fast the rest is.
            max_outbound_inflight: 1000,
            access: None,
            token_logins: None,
            tls: None,
        }
    }
}

/// Why the embedded broker could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listening socket could not be bound (port taken, no permission, ...).
    #[error("cannot bind the MQTT broker to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A [`BrokerConfig`] value is out of range.
    #[error("invalid MQTT broker configuration: {0}")]
    InvalidConfig(String),
    /// The broker implementation refused to start for another reason.
    #[error("the MQTT broker failed to start: {0}")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The TLS listener's certificate, key or client CA cannot be used.
    #[error("the MQTT broker's TLS listener: {0}")]
    Tls(#[from] tls::TlsError),
    /// The TLS listener could not be bound.
    #[error("cannot bind the MQTT broker's TLS listener to {addr}")]
    TlsBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The broker did not stop cleanly (it failed, panicked or hung).
    #[error("the MQTT broker did not stop cleanly: {0}")]
    Stop(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A running MQTT broker inside this process.
///
/// Dropping it without [`EmbeddedBroker::shutdown`] still asks the broker to
/// stop, but nobody waits for the port to be released.
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    tls: Option<tls_front::TlsFront>,
    tls_counters: Arc<TlsCounters>,
    shutdown: BrokerShutdownHandle,
    denials: Arc<DenialCounters>,
    /// `None` only once `shutdown` has taken it.
    task: Option<JoinHandle<mqtt5::Result<()>>>,
    /// Closes the connections of token logins whose token ended (with `token_logins`).
    token_sweeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .field(
                "running",
                &self.task.as_ref().is_some_and(|t| !t.is_finished()),
            )
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Binds the listener and starts serving; returns once clients can connect.
    pub async fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        let bind = config.bind;
        let tls_server = match &config.tls {
            Some(tls) => {
                let mut server =
                    tls.files
                        .load(["tls.cert_file", "tls.key_file", "tls.client_ca_file"])?;
                server.alpn_protocols = vec![b"mqtt".to_vec()];
                Some(Arc::new(server))
            }
            None => None,
        };
        let mut broker = MqttBroker::with_config(mqtt5_config(&config)?)
            .await
            .map_err(|e| start_error(bind, e))?;
        let denials = Arc::new(DenialCounters::default());
        let mut token_provider = None;
        if let Some(access) = config.access {
            let provider = Arc::new(enforce::AccessProvider::new(
                access,
                config.token_logins.clone(),
                Arc::clone(&denials),
            ));
            if config.token_logins.is_some() {
                token_provider = Some(Arc::clone(&provider));
            }
            // `with_auth_provider` replaces mqtt5's provider wholesale, including the
            // failed-login rate limiter it would otherwise wrap around its own; keep it (5
            // failures per address or username a minute lock that one out for 5 minutes).
            broker = broker.with_auth_provider(Arc::new(
                RateLimitedAuthProvider::with_default_limits(provider),
            ));
        }
        // Only knowable before `run()`, which moves the listener into its
        // accept task.
        let local_addr = broker.local_addr().ok_or_else(|| {
            BrokerError::Start("mqtt5 reports no TCP listener after binding".into())
        })?;
        let tls_counters = Arc::new(TlsCounters::default());
        let tls = match (&config.tls, tls_server) {
            (Some(tls), Some(server)) => Some(
                tls_front::TlsFront::start(
                    tls.bind,
                    server,
                    local_addr,
                    tls.handshake_timeout,
                    tls.max_connections,
                    tls_counters.clone(),
                )
                .await
                .map_err(|source| BrokerError::TlsBind {
                    addr: tls.bind,
                    source,
                })?,
            ),
            _ => None,
        };
        let tls_local_addr = tls.as_ref().map(|front| front.local_addr);
        let shutdown = broker.shutdown_handle();
        let token_sweeper = token_provider.map(|provider| {
            let router = broker.router();
            tokio::spawn(close_ended_token_clients(provider, router))
        });
        let mut ready = broker.ready_receiver();
        let mut task = tokio::spawn(async move { broker.run().await });

        // Waiting for readiness is not just politeness: mqtt5 signals shutdown
        // on a broadcast channel that drops the signal if `run()` has not
        // subscribed yet, so a `shutdown()` issued before this point would be
        // lost and the broker would run forever.
        if ready.wait_for(|ready| *ready).await.is_err() {
            // The sender lives inside the broker, so `run()` ended before
            // becoming ready.
            return Err(BrokerError::Start(match (&mut task).await {
                Ok(Ok(())) => "mqtt5 stopped before accepting connections".into(),
                Ok(Err(e)) => Box::new(e),
                Err(join) => Box::new(join),
            }));
        }
        tracing::info!(%local_addr, tls = ?tls_local_addr, "embedded MQTT broker listening");
        Ok(Self {
            local_addr,
            tls,
            tls_counters,
            shutdown,
            denials,
            task: Some(task),
            token_sweeper,
        })
    }

    /// The address actually listened on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address (the real port when bound to port 0), if it has one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|front| front.local_addr)
    }

    /// What the TLS listener refused so far (all zero without one).
    pub fn tls_counters(&self) -> Arc<TlsCounters> {
        Arc::clone(&self.tls_counters)
    }

    /// What the broker refused so far (all zero without an access configuration);
    /// the counters stay live, so keep the `Arc` to render them later.
    pub fn denials(&self) -> Arc<DenialCounters> {
        Arc::clone(&self.denials)
    }

    /// Disconnects all clients, stops every broker task and releases the port
    /// before returning.
    pub async fn shutdown(mut self) -> Result<(), BrokerError> {
        if let Some(sweeper) = self.token_sweeper.take() {
            sweeper.abort();
        }
        if let Some(front) = self.tls.take() {
            front.shutdown().await;
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        self.shutdown.shutdown();
        let outcome = match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(BrokerError::Stop(Box::new(e))),
            Ok(Err(join)) => Err(BrokerError::Stop(Box::new(join))),
            Err(_) => {
                task.abort();
                let _ = task.await;
                Err(BrokerError::Stop(
                    format!("still running {SHUTDOWN_GRACE:?} after the shutdown signal").into(),
                ))
            }
        };
        tracing::info!(local_addr = %self.local_addr, "embedded MQTT broker stopped");
        outcome
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(sweeper) = &self.token_sweeper {
            sweeper.abort();
        }
        if self.task.is_some() {
            self.shutdown.shutdown();
        }
    }
}

/// How soon a connection logged in with a token is closed after the token ends.
const TOKEN_SWEEP: Duration = Duration::from_secs(1);

/// Closes the connections whose login token has ended: the router drops the client's entry and
/// subscriptions, and its handler closes the connection. Without this a connected client would
/// keep receiving what it subscribed to until it disconnected.
async fn close_ended_token_clients(
    provider: Arc<enforce::AccessProvider>,
    router: Arc<mqtt5::broker::router::MessageRouter>,
) {
    let mut ticker = tokio::time::interval(TOKEN_SWEEP);
    loop {
        ticker.tick().await;
        for client in provider.ended_token_clients() {
            tracing::info!(client_id = %client, "MQTT login token ended: connection closed");
            router.unregister_client(&client).await;
        }
    }
}

fn mqtt5_config(config: &BrokerConfig) -> Result<mqtt5::broker::BrokerConfig, BrokerError> {
    if !(MQTT5_MIN_PACKET_SIZE..=MQTT_MAX_PACKET_SIZE).contains(&config.max_packet_size) {
        return Err(BrokerError::InvalidConfig(format!(
            "max_packet_size {} is outside {MQTT5_MIN_PACKET_SIZE}..={MQTT_MAX_PACKET_SIZE}",
            config.max_packet_size
        )));
    }
    if config.max_outbound_inflight == 0 {
        return Err(BrokerError::InvalidConfig(
            "max_outbound_inflight must be greater than zero".to_owned(),
        ));
    }
    if config.max_queued_messages_per_client == 0 || config.max_queued_bytes_per_client == 0 {
        // mqtt5 treats 0 as a real limit, so every queued message would be
        // dropped on arrival.
        return Err(BrokerError::InvalidConfig(
            "per-client queue limits must be greater than zero".to_owned(),
        ));
    }
    // The default storage is a file backend in ./mqtt_storage holding a lock
    // file, which breaks a second broker in the same directory (tests, two
    // demo regions) and litters the working directory. Nothing the demo
    // broker holds needs to outlive the process.
    let storage = StorageConfig::default()
        .with_backend(StorageBackend::Memory)
        .with_persistence(true)
        .with_max_queued_messages_per_client(config.max_queued_messages_per_client)
        .with_max_queued_bytes_per_client(config.max_queued_bytes_per_client);
    Ok(mqtt5::broker::BrokerConfig::default()
        // The default also listens on [::]:1883.
        .with_bind_address(config.bind)
        .with_max_packet_size(config.max_packet_size as usize)
        .with_max_outbound_inflight(config.max_outbound_inflight)
        .with_storage(storage)
        // Per-client delivery lane: QoS 0 overflowing it is dropped, QoS 1
        // overflow goes to the queue above. Spelled out so the two stay
        // visibly related.
        .with_client_channel_capacity(10_000)
        // $SYS statistics would be one more task publishing every 10 s that
        // nothing in the hub consumes.
        .with_sys_topics_enabled(false))
}

/// mqtt5 0.49 reports a failed bind from `MqttBroker::with_config` as
/// `MqttError::Configuration` with a formatted text; the `io::Error` itself is
/// not kept. Rebuild it from that text so callers can still match on the kind.
fn start_error(addr: SocketAddr, error: mqtt5::MqttError) -> BrokerError {
    const BIND_FAILURE: &str = "Failed to bind to any TCP address";
    // mqtt5's own hint for each io::ErrorKind it recognises (binding.rs).
    const KIND_HINTS: [(&str, io::ErrorKind); 4] = [
        ("address already in use", io::ErrorKind::AddrInUse),
        ("permission denied", io::ErrorKind::PermissionDenied),
        ("address not available", io::ErrorKind::AddrNotAvailable),
        ("see error above", io::ErrorKind::Other),
    ];
    let mqtt5::MqttError::Configuration(message) = &error else {
        return BrokerError::Start(Box::new(error));
    };
    if !message.starts_with(BIND_FAILURE) {
        return BrokerError::Start(Box::new(error));
    }
    // One line per attempted address: "  - {addr}: {io error} ({hint})".
    let line_prefix = format!("  - {addr}: ");
    let detail = message
        .lines()
        .find_map(|line| line.strip_prefix(&line_prefix))
        .unwrap_or(message);
    let (text, kind) = KIND_HINTS
        .iter()
        .find_map(|(hint, kind)| {
            detail
                .strip_suffix(&format!(" ({hint})"))
                .map(|text| (text, *kind))
        })
        .unwrap_or((detail, io::ErrorKind::Other));
    BrokerError::Bind {
        addr,
        source: io::Error::new(kind, text.to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    /// Generous for a loaded CI box; healthy runs take milliseconds.
    const DEADLINE: Duration = Duration::from_secs(5);

    async fn start_local() -> EmbeddedBroker {
        EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..BrokerConfig::default()
        })
        .await
        .expect("broker starts on an ephemeral port")
    }

    /// A 3.1.1 client whose event loop runs in its own task, so the test task
    /// can `publish().await` without starving the loop that drains requests.
    struct Client {
        client: AsyncClient,
        incoming: mpsc::Receiver<Result<Packet, ConnectionError>>,
        event_loop: JoinHandle<()>,
    }

    impl Client {
        /// `buffer` bounds how many incoming packets the event loop hands over
        /// before it stops polling — a small one makes a slow subscriber.
        fn connect(addr: SocketAddr, id: &str, will: Option<LastWill>, buffer: usize) -> Self {
            let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            options.set_keep_alive(Duration::from_secs(30));
            if let Some(will) = will {
                options.set_last_will(will);
            }
            let (client, mut event_loop) = AsyncClient::new(options, 64);
            let (tx, incoming) = mpsc::channel(buffer);
            let event_loop = tokio::spawn(async move {
                loop {
                    match event_loop.poll().await {
                        Ok(Event::Incoming(packet)) => {
                            if tx.send(Ok(packet)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Event::Outgoing(_)) => {}
                        Err(e) => {
                            // Polling again would reconnect; tests want to
                            // see exactly one session.
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            });
            Self {
                client,
                incoming,
                event_loop,
            }
        }

        /// The first incoming packet `pick` accepts, skipping the others.
        async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
            let wait = async {
                loop {
                    match self.incoming.recv().await {
                        Some(Ok(packet)) => {
                            if let Some(found) = pick(packet) {
                                return found;
                            }
                        }
                        Some(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
                        None => panic!("event loop ended while waiting for {what}"),
                    }
                }
            };
            timeout(DEADLINE, wait)
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        }

        async fn connected(&mut self) {
            self.expect("CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(()))
                .await;
        }

        async fn subscribe(&mut self, filter: &str) {
            self.client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe request queued");
            let granted = self
                .expect("SUBACK", |p| match p {
                    Packet::SubAck(ack) => Some(ack.return_codes),
                    _ => None,
                })
                .await;
            assert_eq!(
                granted,
                [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
        }
    }

    #[tokio::test]
    async fn delivers_qos1_in_order_to_a_slow_subscriber() {
        let broker = start_local().await;
        let addr = broker.local_addr();
        assert_ne!(addr.port(), 0);

        // Its event loop stalls after 8 packets until the test reads them,
        // i.e. while the whole burst is published.
        let mut subscriber = Client::connect(addr, "t1-sub", None, 8);
        subscriber.subscribe("lab/1/counter").await;
        let mut publisher = Client::connect(addr, "t1-pub", None, 2048);

        const COUNT: u32 = 1000;
        for i in 0..COUNT {
            publisher
                .client
                .publish("lab/1/counter", QoS::AtLeastOnce, false, i.to_be_bytes())
                .await
                .expect("publish queued");
        }
        // Ordered behind the burst, so once it arrives nothing of the burst
        // (no late duplicate either) can still be on its way.
        publisher
            .client
            .publish("lab/1/counter", QoS::AtLeastOnce, false, *b"end")
            .await
            .expect("publish queued");
        let mut acked = 0;
        publisher
            .expect("all PUBACKs", |p| {
                acked += u32::from(matches!(p, Packet::PubAck(_)));
                (acked == COUNT + 1).then_some(())
            })
            .await;

        let mut received = Vec::new();
        subscriber
            .expect("the end marker", |p| match p {
                Packet::Publish(publish) if publish.payload.as_ref() == b"end" => Some(()),
                Packet::Publish(publish) => {
                    let counter: [u8; 4] = publish.payload.as_ref().try_into().unwrap();
                    received.push(u32::from_be_bytes(counter));
                    None
                }
                _ => None,
            })
            .await;
        assert_eq!(received, (0..COUNT).collect::<Vec<_>>());

        broker.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn delivers_retained_message_to_a_later_mqtt5_subscriber() {
        use rumqttc::v5::mqttbytes::v5::Packet as Packet5;

        let broker = start_local().await;
        let addr = broker.local_addr();

        let mut publisher = Client::connect(addr, "t2-pub", None, 16);
        publisher
            .client
            .publish("lab/2/state", QoS::AtLeastOnce, true, *b"online")
            .await
            .expect("publish queued");
        // mqtt5 stores the retained message before it acknowledges.
        publisher
            .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;

        // Published over 3.1.1, received over MQTT 5: both protocol levels
        // share one retained store.
        let options = rumqttc::v5::MqttOptions::new("t2-sub", addr.ip().to_string(), addr.port());
        let (client, mut event_loop) = rumqttc::v5::AsyncClient::new(options, 16);
        let (tx, mut incoming) = mpsc::channel(16);
        let poller = tokio::spawn(async move {
            while let Ok(event) = event_loop.poll().await {
                if let rumqttc::v5::Event::Incoming(packet) = event
                    && tx.send(packet).await.is_err()
                {
                    return;
                }
            }
        });
        client
            .subscribe("lab/2/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .expect("subscribe request queued");
        let retained = timeout(DEADLINE, async {
            loop {
                match incoming.recv().await.expect("v5 event loop alive") {
                    Packet5::Publish(publish) => return publish,
                    _ => continue,
                }
            }
        })
        .await
        .expect("retained message delivered");
        assert_eq!(retained.topic.as_ref(), b"lab/2/state");
        assert_eq!(retained.payload.as_ref(), b"online");
        assert!(retained.retain, "delivered with the retain flag");

        poller.abort();
        broker.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn publishes_last_will_when_a_client_vanishes() {
        let broker = start_local().await;
        let addr = broker.local_addr();

        let mut watcher = Client::connect(addr, "t3-watch", None, 16);
        watcher.subscribe("lab/3/status").await;

        let will = LastWill::new("lab/3/status", "offline", QoS::AtLeastOnce, false);
        let mut device = Client::connect(addr, "t3-device", Some(will), 16);
        device.connected().await;
        // Aborting drops the event loop and with it the socket: the broker
        // sees the TCP connection close without a DISCONNECT.
        device.event_loop.abort();
        assert!(device.event_loop.await.unwrap_err().is_cancelled());

        let payload = watcher
            .expect("the will", |p| match p {
                Packet::Publish(publish) if publish.topic == "lab/3/status" => {
                    Some(publish.payload)
                }
                _ => None,
            })
            .await;
        assert_eq!(payload.as_ref(), b"offline");

        broker.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn two_brokers_coexist_and_shutdown_frees_the_port() {
        let first = start_local().await;
        let second = start_local().await;
        let (first_addr, second_addr) = (first.local_addr(), second.local_addr());
        assert_ne!(first_addr, second_addr);

        // A live client must not keep the broker (or its port) alive.
        let mut on_first = Client::connect(first_addr, "t4-a", None, 16);
        on_first.connected().await;
        let mut on_second = Client::connect(second_addr, "t4-b", None, 16);
        on_second.connected().await;

        first.shutdown().await.expect("first stops cleanly");
        std::net::TcpListener::bind(first_addr).expect("first broker's port is free again");
        // The survivor is unaffected.
        on_second.subscribe("lab/4/#").await;

        second.shutdown().await.expect("second stops cleanly");
        std::net::TcpListener::bind(second_addr).expect("second broker's port is free again");
    }

    #[tokio::test]
    async fn reports_a_taken_port_as_a_bind_error() {
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = squatter.local_addr().unwrap();

        let error = EmbeddedBroker::start(BrokerConfig {
            bind: taken,
            ..BrokerConfig::default()
        })
        .await
        .expect_err("the port is taken");

        let message = error.to_string();
        assert!(message.contains(&taken.port().to_string()), "{message}");
        match error {
            BrokerError::Bind { addr, source } => {
                assert_eq!(addr, taken);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{source}");
            }
            other => panic!("expected a bind error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_a_packet_size_mqtt_cannot_express() {
        let error = EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_packet_size: MQTT_MAX_PACKET_SIZE + 1,
            ..BrokerConfig::default()
        })
        .await
        .expect_err("one over the MQTT maximum");
        assert!(matches!(error, BrokerError::InvalidConfig(_)), "{error}");
    }

    /// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`.
    fn test_pki(dir: &std::path::Path, name: &str) -> (tls::ServerTlsFiles, std::path::PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("server.pem"), server.pem()).unwrap();
        std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
        (
            tls::ServerTlsFiles {
                cert_file: path("server.pem"),
                key_file: path("server.key"),
                client_ca_file: None,
                require_client_cert: false,
            },
            path("ca.pem"),
        )
    }

    /// Connects over TLS trusting `ca`; the first CONNACK or the connection error.
    async fn tls_connect(addr: SocketAddr, id: &str, ca: &std::path::Path) -> Result<(), String> {
        let config = tls::ClientTlsFiles {
            ca_file: ca.to_owned(),
            ..tls::ClientTlsFiles::default()
        }
        .load("tls")
        .unwrap();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config.rustls_config()),
        ));
        let (_client, mut event_loop) = AsyncClient::new(options, 8);
        timeout(DEADLINE, async {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    #[tokio::test]
    async fn serves_mqtt_over_tls_only_to_clients_that_trust_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (files, ca) = test_pki(dir.path(), "good");
        let (_, other_ca) = test_pki(dir.path(), "other");
        let broker = EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: Some(BrokerTls::new(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                files,
            )),
            ..BrokerConfig::default()
        })
        .await
        .expect("broker with a TLS listener");
        let tls_addr = broker.tls_local_addr().expect("TLS listener");
        assert_ne!(tls_addr.port(), 0);
        assert_ne!(tls_addr, broker.local_addr());

        tls_connect(tls_addr, "t-tls-ok", &ca)
            .await
            .expect("trusted CA connects");
        let refused = tls_connect(tls_addr, "t-tls-bad", &other_ca)
            .await
            .expect_err("unknown CA");
        assert!(refused.to_lowercase().contains("certificate"), "{refused}");
        // A plain MQTT client on the TLS port never gets a CONNACK.
        let mut plain = Client::connect(tls_addr, "t-tls-plain", None, 8);
        match timeout(DEADLINE, plain.incoming.recv())
            .await
            .expect("an outcome")
        {
            Some(Err(_)) | None => {}
            Some(Ok(packet)) => panic!("plain client got {packet:?} from the TLS port"),
        }
        broker.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn refuses_to_start_with_an_unreadable_tls_certificate() {
        let error = EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: Some(BrokerTls::new(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                tls::ServerTlsFiles {
                    cert_file: "/nonexistent/broker.pem".into(),
                    key_file: "/nonexistent/broker.key".into(),
                    client_ca_file: None,
                    require_client_cert: false,
                },
            )),
            ..BrokerConfig::default()
        })
        .await
        .expect_err("no certificate");
        let text = error.to_string();
        assert!(text.contains("/nonexistent/broker.pem"), "{text}");
    }

    #[tokio::test]
    async fn a_silent_tcp_connection_to_the_tls_port_does_not_hold_up_others() {
        let dir = tempfile::tempdir().unwrap();
        let (files, ca) = test_pki(dir.path(), "stall");
        let broker = EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: Some(BrokerTls::new(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                files,
            )),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        let tls_addr = broker.tls_local_addr().unwrap();
        let _silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        tls_connect(tls_addr, "t-after-silent", &ca)
            .await
            .expect("connects despite a silent peer");
        broker.shutdown().await.unwrap();
    }
}
