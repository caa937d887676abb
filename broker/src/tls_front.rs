//! The embedded broker's TLS listener: our own accept loop that terminates TLS and forwards the
//! plain MQTT bytes to the broker's TCP listener on loopback.
//!
//! Why not mqtt5's own TLS listener: mqtt5 0.49 runs each TLS handshake inside its accept loop,
//! without a timeout, so one client that opens a TCP connection to the TLS port and sends
//! nothing stops every later TLS client from connecting (a unit test in `lib.rs` keeps this
//! honest). Here every handshake runs in its own task under a deadline, and the number of TLS
//! connections is capped; refusals and failures are counted ([`TlsCounters`]).
//!
//! The forwarded connection comes from a loopback address derived from the client's address
//! (`10.1.2.3` → `127.1.2.3`), so the broker's per-address login rate limit and its logs still
//! tell clients apart instead of seeing every TLS client as `127.0.0.1`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How many TLS connections the listener refused or lost, by reason.
#[derive(Debug, Default)]
pub struct TlsCounters {
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    handshake_timeout: AtomicU64,
    refused_at_limit: AtomicU64,
    upstream_failed: AtomicU64,
}

impl TlsCounters {
    /// TLS handshakes that completed.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Handshakes that failed (untrusted client certificate, plain MQTT on the TLS port, ...).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failed.load(Ordering::Relaxed)
    }

    /// Handshakes not complete within the deadline.
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeout.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the cap was reached.
    pub fn refused_at_limit(&self) -> u64 {
        self.refused_at_limit.load(Ordering::Relaxed)
    }

    /// `demolab_broker_tls_*` in Prometheus' text format.
    pub fn render_prometheus(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP demolab_broker_tls_connections_total MQTT TLS handshakes completed.\n\
             # TYPE demolab_broker_tls_connections_total counter\n\
             demolab_broker_tls_connections_total {}\n\
             # HELP demolab_broker_tls_refused_total MQTT TLS connections refused or lost, by reason.\n\
             # TYPE demolab_broker_tls_refused_total counter\n\
             demolab_broker_tls_refused_total{{reason=\"handshake_failed\"}} {}\n\
             demolab_broker_tls_refused_total{{reason=\"handshake_timeout\"}} {}\n\
             demolab_broker_tls_refused_total{{reason=\"connection_limit\"}} {}\n\
             demolab_broker_tls_refused_total{{reason=\"broker_unreachable\"}} {}\n",
            load(&self.accepted),
            load(&self.handshake_failed),
            load(&self.handshake_timeout),
            load(&self.refused_at_limit),
            load(&self.upstream_failed),
        )
    }
}

/// A running TLS listener.
#[derive(Debug)]
pub(crate) struct TlsFront {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// `None` once `shutdown` took it.
    task: Option<JoinHandle<()>>,
}

impl TlsFront {
    /// Binds `bind` and forwards every TLS client to `upstream` (the broker's plain listener).
    pub async fn start(
        bind: SocketAddr,
        server: Arc<rustls::ServerConfig>,
        upstream: SocketAddr,
        handshake_timeout: Duration,
        max_connections: usize,
        counters: Arc<TlsCounters>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(server),
            reachable(upstream),
            handshake_timeout,
            Arc::new(Semaphore::new(max_connections)),
            counters,
            stopped,
        ));
        Ok(Self {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// Stops accepting and closes every forwarded connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A wildcard bind is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshake_timeout: Duration,
    slots: Arc<Semaphore>,
    counters: Arc<TlsCounters>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file handles, most likely; retrying at once would spin.
                tracing::debug!(%err, "MQTT TLS accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stopped.changed() => break,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.refused_at_limit.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (acceptor, counters) = (acceptor.clone(), counters.clone());
        connections.spawn(async move {
            let _permit = permit;
            forward(tcp, peer, acceptor, upstream, handshake_timeout, &counters).await;
        });
    }
    connections.shutdown().await;
}

async fn forward(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshake_timeout: Duration,
    counters: &TlsCounters,
) {
    let _ = tcp.set_nodelay(true);
    let mut tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, %err, "MQTT TLS handshake failed");
            return;
        }
        Err(_) => {
            counters.handshake_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "MQTT TLS handshake timed out");
            return;
        }
    };
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let mut plain = match connect_as(peer.ip(), upstream).await {
        Ok(plain) => plain,
        Err(err) => {
            counters.upstream_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, %err, "MQTT TLS client cannot reach the broker");
            return;
        }
    };
    let _ = plain.set_nodelay(true);
    // Either side closing ends both; errors are the client going away.
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}

/// Connects to the broker from the loopback address standing for `client`.
async fn connect_as(client: IpAddr, upstream: SocketAddr) -> std::io::Result<TcpStream> {
    if let (SocketAddr::V4(_), Some(source)) = (upstream, loopback_alias(client)) {
        let socket = TcpSocket::new_v4()?;
        if socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).is_ok() {
            return socket.connect(upstream).await;
        }
    }
    TcpStream::connect(upstream).await
}

/// `a.b.c.d` → `127.b.c.d` (an IPv6 client: its last three bytes); loopback stays itself.
fn loopback_alias(client: IpAddr) -> Option<Ipv4Addr> {
    let [_, b, c, d] = match client {
        IpAddr::V4(v4) if v4.is_loopback() => return Some(v4),
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return loopback_alias(IpAddr::V4(v4)),
            None => {
                let o = v6.octets();
                [0, o[13], o[14], o[15]]
            }
        },
    };
    // 127.0.0.0 and 127.255.255.255 are network and broadcast addresses.
    match (b, c, d) {
        (0, 0, 0) | (255, 255, 255) => None,
        _ => Some(Ipv4Addr::new(127, b, c, d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_keep_distinct_loopback_aliases() {
        let alias = |s: &str| loopback_alias(s.parse().expect("ip"));
        assert_eq!(alias("10.1.2.3"), Some(Ipv4Addr::new(127, 1, 2, 3)));
        assert_eq!(alias("127.0.0.1"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            alias("::ffff:192.168.4.20"),
            Some(Ipv4Addr::new(127, 168, 4, 20))
        );
        assert_eq!(alias("fe80::1:2:3"), Some(Ipv4Addr::new(127, 2, 0, 3)));
        assert_eq!(alias("10.0.0.0"), None);
    }
}
