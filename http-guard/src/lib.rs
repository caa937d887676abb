//! The HTTP(S) transport of the hub and of the lab gateways' ops endpoint: an accept loop in
//! front of an axum router that a lab network full of students cannot exhaust.
//!
//! `axum::serve` keeps a half-sent request open forever and accepts connections until the
//! process runs out of file handles. This loop adds what it lacks:
//!
//! - a cap on open connections, overall and per client address; beyond it a connection gets a
//!   bare `503` and is closed at once (counted by reason, WARN at most every 10 s);
//! - a header-read timeout (hyper's; against slowloris), a TLS handshake timeout, and an idle
//!   timeout (no byte either way: first a graceful close, one more idle period later a hard
//!   one), each counted;
//! - optional TLS (rustls on ring) for the API, the web platform and both stream kinds;
//! - graceful shutdown on the caller's cancellation token (in-flight requests finish, bounded).
//!
//! Everything it refuses or closes is counted in [`HttpCounters`], which the caller renders into
//! its `/metrics` under its own prefix.
//!
//! Upgrades (WebSocket) keep working: an upgraded connection leaves hyper, but its socket
//! still holds its slot, so it counts as open until the stream ends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Why the HTTP server refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// `max_connections` connections were open.
    Limit,
    /// `max_connections_per_client` connections from that address were open.
    ClientLimit,
}

impl HttpRefusal {
    /// Every reason, in label order.
    pub const ALL: [HttpRefusal; 2] = [HttpRefusal::Limit, HttpRefusal::ClientLimit];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpRefusal::Limit => "connection_limit",
            HttpRefusal::ClientLimit => "client_limit",
        }
    }
}

/// Which HTTP timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTimeout {
    /// The request header was not complete in `header_timeout` (slowloris).
    Header,
    /// No byte moved for two `idle_timeout` periods.
    Idle,
    /// The TLS handshake was not complete in `tls_handshake_timeout`.
    TlsHandshake,
}

impl HttpTimeout {
    /// Every kind, in label order.
    pub const ALL: [HttpTimeout; 3] = [
        HttpTimeout::Header,
        HttpTimeout::Idle,
        HttpTimeout::TlsHandshake,
    ];

    /// Stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpTimeout::Header => "header",
            HttpTimeout::Idle => "idle",
            HttpTimeout::TlsHandshake => "tls_handshake",
        }
    }
}

/// What the accept loop saw: connections accepted and open, refused at a cap, closed by a
/// timeout, failed TLS handshakes.
#[derive(Debug, Default)]
pub struct HttpCounters {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: [AtomicU64; HttpRefusal::ALL.len()],
    timeouts: [AtomicU64; HttpTimeout::ALL.len()],
    tls_failures: AtomicU64,
}

impl HttpCounters {
    fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn count_refusal(&self, reason: HttpRefusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn count_timeout(&self, kind: HttpTimeout) {
        self.timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn count_tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now (upgraded streams included).
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused for `reason`.
    pub fn refusals(&self, reason: HttpRefusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Connections closed by the `kind` timeout.
    pub fn timeouts(&self, kind: HttpTimeout) -> u64 {
        self.timeouts[kind as usize].load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.load(Ordering::Relaxed)
    }

    /// The counters as Prometheus text, every name starting with `prefix` (e.g.
    /// `demolab_hub_http`).
    pub fn render_prometheus(&self, prefix: &str) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {prefix}_connections_total HTTP connections accepted.\n\
             # TYPE {prefix}_connections_total counter\n{prefix}_connections_total {}\n\
             # HELP {prefix}_tls_failures_total HTTPS connections whose TLS handshake failed.\n\
             # TYPE {prefix}_tls_failures_total counter\n{prefix}_tls_failures_total {}\n\
             # HELP {prefix}_connections_open HTTP connections open (WebSocket and SSE streams included).\n\
             # TYPE {prefix}_connections_open gauge\n{prefix}_connections_open {}\n\
             # HELP {prefix}_refused_total HTTP connections refused at a limit, by reason.\n\
             # TYPE {prefix}_refused_total counter",
            self.accepted(),
            self.tls_failures(),
            self.open(),
        );
        for reason in HttpRefusal::ALL {
            let _ = writeln!(
                out,
                "{prefix}_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.refusals(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {prefix}_timeouts_total HTTP connections closed by a timeout, by kind.\n\
             # TYPE {prefix}_timeouts_total counter"
        );
        for kind in HttpTimeout::ALL {
            let _ = writeln!(
                out,
                "{prefix}_timeouts_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.timeouts(kind)
            );
        }
        out
    }
}

/// Transport limits of the HTTP server (the hub takes them from `[http]` in `hub.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most (WebSocket and SSE streams included).
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_client: usize,
    /// Time a client has to send a request's complete header.
    pub header_timeout: Duration,
    /// Time a connection may stay without a byte in either direction.
    pub idle_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            // Well below the usual 1024 open-file soft limit, which the broker, the store
            // and the gateways' sockets share.
            max_connections: 512,
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(10),
            // Above the SSE keep-alive (15 s), so a quiet stream is never cut.
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How long shutdown waits for in-flight requests before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// At most one WARN per this period for refusals and accept errors.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file handles): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a refused client reads before the socket closes.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 74\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections\"}}";

/// Serves `app` on `listener` until `cancel` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    stats: Arc<HttpCounters>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let tls = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    let mut refusals = Throttle::default();
    let mut accept_errors = Throttle::default();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                if let Some(suppressed) = accepted_warn(&mut accept_errors) {
                    warn!(%err, suppressed, "HTTP accept failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let refusal = match slots.clone().try_acquire_owned() {
            Err(_) => Err(HttpRefusal::Limit),
            Ok(permit) => Slot::take(permit, &per_client, peer.ip(), &limits, stats.clone())
                .ok_or(HttpRefusal::ClientLimit),
        };
        let slot = match refusal {
            Ok(slot) => slot,
            Err(reason) => {
                stats.count_refusal(reason);
                if let Some(suppressed) = accepted_warn(&mut refusals) {
                    warn!(client = %peer.ip(), reason = reason.as_str(), suppressed, "HTTP connection refused");
                }
                // Best effort and never waits: a refused client gets no more of our time.
                let _ = tcp.try_write(BUSY_RESPONSE);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            slot,
            tls.clone(),
            app.clone(),
            limits.clone(),
            stats.clone(),
            cancel.clone(),
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            left = connections.len(),
            "HTTP connections still open after the shutdown grace; closing them"
        );
        connections.shutdown().await;
    }
}

/// One accepted connection: TLS handshake (bounded), then HTTP/1.1 until done, idle or shut.
#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: HttpLimits,
    stats: Arc<HttpCounters>,
    cancel: CancellationToken,
) {
    match tls {
        None => http(tcp, peer, slot, app, &limits, &stats, &cancel).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                result = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)) => result,
                () = cancel.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => http(stream, peer, slot, app, &limits, &stats, &cancel).await,
                Ok(Err(err)) => {
                    stats.count_tls_failure();
                    debug!(client = %peer, %err, "TLS handshake failed");
                }
                Err(_) => {
                    stats.count_timeout(HttpTimeout::TlsHandshake);
                    debug!(client = %peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    limits: &HttpLimits,
    stats: &HttpCounters,
    cancel: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: io,
        started,
        activity: activity.clone(),
        _slot: slot,
    };
    // Handlers that key on the client (login rate limits) read it as axum's `ConnectInfo`.
    let service = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    let mut closing = false;
    let mut idle_warned = false;
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let idle_deadline = last + limits.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                match result {
                    Err(err) if err.is_timeout() => {
                        stats.count_timeout(HttpTimeout::Header);
                        debug!(client = %peer, "HTTP request header not complete in time; closed");
                    }
                    Err(err) => debug!(client = %peer, %err, "HTTP connection ended with an error"),
                    Ok(()) => {}
                }
                return;
            }
            () = cancel.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                if Instant::now() < started + Duration::from_millis(activity.load(Ordering::Relaxed)) + limits.idle_timeout {
                    continue; // There was traffic meanwhile.
                }
                if !idle_warned {
                    // Graceful first: an idle keep-alive connection closes at once, a request
                    // in progress may still finish.
                    idle_warned = true;
                    connection.as_mut().graceful_shutdown();
                    activity.store(elapsed_ms(started), Ordering::Relaxed);
                } else {
                    stats.count_timeout(HttpTimeout::Idle);
                    debug!(client = %peer, "HTTP connection idle; closed");
                    return;
                }
            }
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection's place under both caps; dropping it (when the socket closes, after an upgrade
/// too) frees the place and updates the open-connection gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
    stats: Arc<HttpCounters>,
}

impl Slot {
    fn take(
        permit: OwnedSemaphorePermit,
        per_client: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        client: IpAddr,
        limits: &HttpLimits,
        stats: Arc<HttpCounters>,
    ) -> Option<Slot> {
        {
            let mut counts = per_client.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(client).or_insert(0);
            if *count >= limits.max_connections_per_client {
                return None;
            }
            *count += 1;
        }
        stats.opened();
        Some(Slot {
            _permit: permit,
            per_client: per_client.clone(),
            client,
            stats,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
        self.stats.closed();
    }
}

/// The socket with a note of when a byte last moved (milliseconds since `started`).
struct Tracked<I> {
    inner: I,
    started: Instant,
    activity: Arc<AtomicU64>,
    _slot: Slot,
}

impl<I> Tracked<I> {
    fn touch(&self) {
        self.activity
            .store(elapsed_ms(self.started), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets one WARN through per [`WARN_EVERY`] and counts the ones it held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

/// `Some(suppressed since the last one)` when a WARN may be logged now.
fn accepted_warn(throttle: &mut Throttle) -> Option<u64> {
    let now = Instant::now();
    if throttle.last.is_some_and(|last| now < last + WARN_EVERY) {
        throttle.suppressed += 1;
        return None;
    }
    throttle.last = Some(now);
    Some(std::mem::take(&mut throttle.suppressed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_one_warning_through_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        assert_eq!(accepted_warn(&mut throttle), Some(0));
        assert_eq!(accepted_warn(&mut throttle), None);
        assert_eq!(accepted_warn(&mut throttle), None);
        assert_eq!(throttle.suppressed, 2);
        throttle.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(accepted_warn(&mut throttle), Some(2));
    }

    #[test]
    fn the_counters_render_under_the_callers_prefix() {
        let counters = HttpCounters::default();
        counters.opened();
        counters.count_refusal(HttpRefusal::ClientLimit);
        counters.count_timeout(HttpTimeout::Header);
        let text = counters.render_prometheus("demolab_gateway_http");
        for line in [
            "demolab_gateway_http_connections_total 1",
            "demolab_gateway_http_connections_open 1",
            "demolab_gateway_http_refused_total{reason=\"client_limit\"} 1",
            "demolab_gateway_http_refused_total{reason=\"connection_limit\"} 0",
            "demolab_gateway_http_timeouts_total{kind=\"header\"} 1",
            "demolab_gateway_http_tls_failures_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_busy_answer_declares_its_exact_length() {
        let text = std::str::from_utf8(BUSY_RESPONSE).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<serde_json::Value>(body).expect("JSON body");
    }
}
