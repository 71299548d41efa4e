//! [`ServerLimits`]: what one inbound listener lets a client hold, and for how long.

use std::time::Duration;

/// Bounds on the connections a server accepts: how many, how long a handshake or a request
/// head may take, how many streams one connection may carry, and when a connection is
/// closed. One type for every meshwork server (`MeshServer`, meshwork-http's `Server`, the
/// admin endpoint); each server builder takes it whole (`limits`).
///
/// Every default is chosen so that a client that sends nothing, or sends one byte at a
/// time, cannot keep a connection or a handshake slot forever, and so that well-behaved
/// gRPC and HTTP clients never notice. The anchor of each default is named on its setter:
///
/// | limit | default | anchor |
/// |---|---|---|
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | Envoy `transport_socket_connect_timeout`; gRPC's connection deadline is 120 s |
/// | [`max_concurrent_handshakes`](Self::max_concurrent_handshakes) | 1024, oldest dropped when full | none (neither bounds it); keeps a flood from starving real clients |
/// | [`max_connections`](Self::max_connections) | 10 000 | Envoy overload manager `global_downstream_max_connections` (Envoy's has no default) |
/// | [`header_read_timeout`](Self::header_read_timeout) | 30 s | hyper's `header_read_timeout` (HTTP/1); also the wait for a client's first bytes after its handshake (grpc-go bounds the wait for the preface by its connection timeout) |
/// | [`max_header_list_size`](Self::max_header_list_size) | 60 KiB | Envoy `max_request_headers_kb` (HTTP/2) |
/// | [`max_concurrent_streams`](Self::max_concurrent_streams) | 1024 | see the setter |
/// | [`keepalive`](Self::keepalive) | ping after 2 h idle, 20 s to answer | gRFC A8 server defaults |
/// | [`idle_timeout`](Self::idle_timeout) | 1 h | Envoy `common_http_protocol_options.idle_timeout` |
/// | [`max_connection_age`](Self::max_connection_age) | off | gRFC A9 `max_connection_age`, Envoy `max_connection_duration` (both off) |
/// | [`drain_grace`](Self::drain_grace) | 30 s | gRFC A9 `max_connection_age_grace` |
/// | [`close_at_peer_expiry`](Self::close_at_peer_expiry) | on | none: a connection must not outlive the SVID that authenticated it |
///
/// ```
/// use std::time::Duration;
/// use meshwork_core::inbound::ServerLimits;
///
/// let limits = ServerLimits::new()
///     .max_connections(Some(2_000))
///     .max_connection_age(Some(Duration::from_secs(30 * 60)));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_concurrent_handshakes: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_list_size: u32,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) drain_grace: Duration,
    pub(crate) config_change_drain_grace: Duration,
    pub(crate) close_at_peer_expiry: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: 1024,
            max_connections: Some(10_000),
            header_read_timeout: Duration::from_secs(30),
            max_header_list_size: 60 * 1024,
            max_concurrent_streams: 1024,
            keepalive_interval: Some(Duration::from_secs(2 * 60 * 60)),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(60 * 60)),
            max_connection_age: None,
            drain_grace: Duration::from_secs(30),
            config_change_drain_grace: Duration::from_secs(10 * 60),
            close_at_peer_expiry: true,
        }
    }
}

impl ServerLimits {
    /// The defaults in the [table above](Self).
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the TLS handshake may take, from accept to a verified client SVID (10 s by
    /// default; Envoy's `transport_socket_connect_timeout`, well inside gRPC's 120 s
    /// connection deadline, since a mesh peer is close and its handshake takes one RTT).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many TLS handshakes may be in progress at once (1024 by default; at least 1).
    /// When it is full, a new connection is not refused: the *oldest* unfinished handshake
    /// is dropped to make room. A flood of connections that never send a ClientHello then
    /// cycles through the slots while a real client, whose handshake takes a round trip,
    /// finishes long before it becomes the oldest.
    pub fn max_concurrent_handshakes(mut self, max: usize) -> Self {
        self.max_concurrent_handshakes = max.max(1);
        self
    }

    /// How many connections (handshaking or established) the listener holds at once
    /// (10 000 by default; `None` for no limit). A connection beyond it is accepted and
    /// closed at once, as Envoy's `global_downstream_max_connections` does, so the kernel's
    /// backlog does not fill and file descriptors stay bounded.
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// How long an HTTP/1 client may take to send a complete request head (30 s by default,
    /// hyper's own default, which hyper applies only when it has a timer; meshwork always
    /// gives it one), and how long any client may stay silent after its TLS handshake (an
    /// HTTP/2 client that never sends its preface; grpc-go bounds that wait by its
    /// connection timeout). The connection is closed when it elapses.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The largest HTTP/2 header list (HPACK-decoded, RFC 9113 `SETTINGS_MAX_HEADER_LIST_SIZE`)
    /// a request may carry (60 KiB by default, Envoy's `max_request_headers_kb`). HTTP/1
    /// heads are bounded by hyper (100 headers, a 400 KiB read buffer).
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }

    /// How many HTTP/2 streams one connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`; 1024 by default). Envoy and gRPC servers default
    /// to unlimited, which lets one connection hold unbounded handler state; RFC 9113 asks
    /// for at least 100. A gRPC channel multiplexes all its calls, long-lived watches
    /// included, over one connection and queues calls beyond the limit (it does not fail
    /// them), so the default stays well above what one client needs.
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.max_concurrent_streams = max;
        self
    }

    /// HTTP/2 keepalive: after `interval` without frames from the client, send a PING and
    /// close the connection if it is not answered within `timeout` (gRFC A8's server
    /// defaults: 2 h, 20 s). `None` sends no pings.
    pub fn keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Closes a connection that has had no request in progress for this long, counted from
    /// the end of its last request, or from the handshake if it never sent one (1 h by
    /// default, Envoy's `idle_timeout`; gRPC's `max_connection_idle` is off by default).
    /// This also bounds a client that completes TLS and then never sends an HTTP/2 preface.
    /// The close is graceful (a GOAWAY on HTTP/2). `None` keeps idle connections.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Closes every connection gracefully this long after its handshake (off by default,
    /// as gRFC A9's `max_connection_age` and Envoy's `max_connection_duration` are): new
    /// requests are refused (GOAWAY on HTTP/2; `Connection: close` after the current
    /// request on HTTP/1), requests in flight get [`drain_grace`](Self::drain_grace) to
    /// finish. Use it to spread clients over new server instances, or to bound how long a
    /// connection keeps the trust decisions of its handshake.
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.max_connection_age = age;
        self
    }

    /// How long the requests of a connection closed by
    /// [`max_connection_age`](Self::max_connection_age), by
    /// [`close_at_peer_expiry`](Self::close_at_peer_expiry) or by
    /// [`idle_timeout`](Self::idle_timeout) may take to finish before the connection is
    /// dropped (30 s by default; gRFC A9's `max_connection_age_grace`, which is unbounded
    /// there, is bounded here so that a stream cannot keep an expired peer connected).
    /// A server's own graceful shutdown is not bounded by it.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// How long the requests of an xDS-driven server's connection may take to finish when a
    /// Listener update gives its address another filter chain (or none, the server no
    /// longer serving) before the connection is dropped: 10 minutes by default, gRFC A36's
    /// drain grace time, so that long-lived streams can end on their own while new calls
    /// go to new connections (GOAWAY). Servers not driven by xDS do not use it.
    pub fn config_change_drain_grace(mut self, grace: Duration) -> Self {
        self.config_change_drain_grace = grace;
        self
    }

    /// Closes a connection gracefully when the client's certificate (the earliest
    /// `notAfter` of the chain it presented) expires (on by default): the handshake's trust
    /// decision holds only as long as the SVID that earned it.
    pub fn close_at_peer_expiry(mut self, close: bool) -> Self {
        self.close_at_peer_expiry = close;
        self
    }
}
