//! Per-worker counters and gauges, and their Prometheus text rendering.
//!
//! Each worker owns a plain [`Counters`] array and bumps it with ordinary adds: no atomics and no locks on the
//! message path. Once per loop turn the worker copies the array into its [`WorkerSlot`] (relaxed atomic stores,
//! one per series, not per message); a `/metrics` scrape, served by whichever worker took the request, sums
//! the slots. A scrape therefore lags each worker by at most one loop turn.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares every series once: variant, family name, kind, labels and help text.
macro_rules! series {
    ( $( $variant:ident => $family:literal, $kind:ident, $labels:literal, $help:literal; )* ) => {
        /// One metric series. Counters only grow; gauges are per worker and rendered with a `worker` label, except
        /// node gauges (one value for the process).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        #[allow(missing_docs)]
        pub enum Metric { $( $variant, )* }

        /// Number of series.
        pub const SERIES: usize = [$( Metric::$variant ),*].len();

        const TABLE: [(Metric, &str, Kind, &str, &str); SERIES] = [
            $( (Metric::$variant, $family, Kind::$kind, $labels, $help), )*
        ];
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    /// Per worker, with a `worker` label.
    Gauge,
    /// One value for the process (set by one thread, e.g. the cluster bridge): summed, no label.
    Node,
}

series! {
    ConnectionsAccepted => "herald_connections_accepted_total", Counter, "", "TCP connections accepted.";
    RejectedMaxConnections => "herald_connections_rejected_total", Counter, "reason=\"max_connections\"",
        "Connections refused, by reason.";
    RejectedPerIp => "herald_connections_rejected_total", Counter, "reason=\"max_connections_per_ip\"", "";
    RejectedDraining => "herald_connections_rejected_total", Counter, "reason=\"draining\"", "";
    HandshakeTimeouts => "herald_connections_rejected_total", Counter, "reason=\"handshake_timeout\"", "";
    RejectedProxyHeader => "herald_connections_rejected_total", Counter, "reason=\"proxy_header\"", "";
    Upgrades => "herald_upgrades_total", Counter, "", "WebSocket upgrades completed (101 sent).";
    HttpRequests => "herald_http_requests_total", Counter, "", "Plain HTTP requests answered (healthz, metrics, publish).";
    Failed400 => "herald_handshakes_failed_total", Counter, "status=\"400\"", "Requests refused before the upgrade, by HTTP status.";
    Failed401 => "herald_handshakes_failed_total", Counter, "status=\"401\"", "";
    Failed403 => "herald_handshakes_failed_total", Counter, "status=\"403\"", "";
    Failed404 => "herald_handshakes_failed_total", Counter, "status=\"404\"", "";
    Failed405 => "herald_handshakes_failed_total", Counter, "status=\"405\"", "";
    Failed413 => "herald_handshakes_failed_total", Counter, "status=\"413\"", "";
    Failed426 => "herald_handshakes_failed_total", Counter, "status=\"426\"", "";
    Failed431 => "herald_handshakes_failed_total", Counter, "status=\"431\"", "";
    Failed503 => "herald_handshakes_failed_total", Counter, "status=\"503\"", "";
    FailedOther => "herald_handshakes_failed_total", Counter, "status=\"other\"", "";
    MessagesIn => "herald_messages_in_total", Counter, "", "WebSocket data messages received.";
    BytesIn => "herald_bytes_in_total", Counter, "", "Bytes read from sockets.";
    MessagesOut => "herald_messages_out_total", Counter, "", "Data messages queued to connections (echoes, replies, deliveries).";
    BytesOut => "herald_bytes_out_total", Counter, "", "Bytes written to sockets.";
    Writes => "herald_socket_writes_total", Counter, "", "Vectored write calls made.";
    Publishes => "herald_publishes_total", Counter, "", "Messages published (raw /pub, /ws, HTTP), counted on the worker that took them.";
    Deliveries => "herald_deliveries_total", Counter, "", "Fan-out deliveries: messages queued to subscribers.";
    DeflateBatches => "herald_compression_batches_total", Counter, "", "Batches compressed for subscribers with permessage-deflate: one per topic batch per worker, whatever the number of subscribers.";
    DeflateCompressed => "herald_compression_messages_total", Counter, "form=\"compressed\"", "Messages prepared for clients with permessage-deflate (broadcast batches, echoes), by the form they went out in.";
    DeflatePlain => "herald_compression_messages_total", Counter, "form=\"plain\"", "";
    DeflateBytesBefore => "herald_compression_bytes_total", Counter, "stage=\"before\"", "Payload bytes of the messages sent compressed, before and after compression.";
    DeflateBytesAfter => "herald_compression_bytes_total", Counter, "stage=\"after\"", "";
    InflateErrors => "herald_inflate_errors_total", Counter, "", "Connections closed for a compressed message that did not inflate (1007) or inflated past max_message_size (1009).";
    BackpressureDrops => "herald_backpressure_drops_total", Counter, "", "Messages dropped for a slow subscriber (policy drop).";
    BackpressureCloses => "herald_backpressure_closes_total", Counter, "", "Slow subscribers closed with 1008 (policy close).";
    InboxFull => "herald_inbox_full_total", Counter, "", "Times a cross-worker inbox was full and publishers were paused.";
    SubscriptionLimit => "herald_limit_hits_total", Counter, "limit=\"max_subscriptions\"", "Requests refused by a configured limit.";
    TopicLimit => "herald_limit_hits_total", Counter, "limit=\"max_topics_per_worker\"", "";
    ReceiveMemoryLimit => "herald_limit_hits_total", Counter, "limit=\"max_receive_memory\"", "";
    JsonDepthLimit => "herald_limit_hits_total", Counter, "limit=\"max_json_depth\"", "";
    NewTopicRateLimit => "herald_limit_hits_total", Counter, "limit=\"max_new_topics_per_second\"", "";
    ReadPauses => "herald_read_pauses_total", Counter, "", "Times reading from a connection was paused because its own queued replies passed max_backpressure.";
    UringBuffersExhausted => "herald_uring_buffers_exhausted_total", Counter, "", "Receives (uring backend) that found every provided buffer in use and waited for one (server.uring_buffers).";
    Close1000 => "herald_close_codes_sent_total", Counter, "code=\"1000\"", "Close frames sent, by code.";
    Close1001 => "herald_close_codes_sent_total", Counter, "code=\"1001\"", "";
    Close1002 => "herald_close_codes_sent_total", Counter, "code=\"1002\"", "";
    Close1003 => "herald_close_codes_sent_total", Counter, "code=\"1003\"", "";
    Close1007 => "herald_close_codes_sent_total", Counter, "code=\"1007\"", "";
    Close1008 => "herald_close_codes_sent_total", Counter, "code=\"1008\"", "";
    Close1009 => "herald_close_codes_sent_total", Counter, "code=\"1009\"", "";
    Close1011 => "herald_close_codes_sent_total", Counter, "code=\"1011\"", "";
    Close4401 => "herald_close_codes_sent_total", Counter, "code=\"4401\"", "";
    Close4403 => "herald_close_codes_sent_total", Counter, "code=\"4403\"", "";
    CloseOther => "herald_close_codes_sent_total", Counter, "code=\"other\"", "";
    AuthOk => "herald_auth_checks_total", Counter, "result=\"ok\"", "Token and permission checks, by result (upgrades, auth messages, per-message requests, POST /publish).";
    AuthUnauthorized => "herald_auth_checks_total", Counter, "result=\"unauthorized\"", "";
    AuthForbidden => "herald_auth_checks_total", Counter, "result=\"forbidden\"", "";
    AuthBadOrigin => "herald_auth_checks_total", Counter, "result=\"bad_origin\"", "";
    AuthCacheHits => "herald_auth_cache_hits_total", Counter, "cache=\"per_message\"", "Tokens accepted without a signature check: a connection's per-message cache, or the worker's cache of verified tokens.";
    AuthTokenCacheHits => "herald_auth_cache_hits_total", Counter, "cache=\"verified\"", "";
    AuthTimeouts => "herald_auth_closes_total", Counter, "reason=\"timeout\"", "Connections closed with 4401 by the server's clock, by reason.";
    AuthExpired => "herald_auth_closes_total", Counter, "reason=\"expired\"", "";
    KeyReloads => "herald_auth_key_reloads_total", Counter, "", "Key sets put in force by SIGHUP, counted per worker.";
    TlsOk => "herald_tls_handshakes_total", Counter, "result=\"ok\"", "TLS handshakes, by result: ok, or why it failed (timeout, eof: the client left mid-handshake, not_tls: plain HTTP or garbage, and the TLS error classes).";
    TlsTimeout => "herald_tls_handshakes_total", Counter, "result=\"timeout\"", "";
    TlsEof => "herald_tls_handshakes_total", Counter, "result=\"eof\"", "";
    TlsNotTls => "herald_tls_handshakes_total", Counter, "result=\"not_tls\"", "";
    TlsInvalidMessage => "herald_tls_handshakes_total", Counter, "result=\"invalid_message\"", "";
    TlsIncompatible => "herald_tls_handshakes_total", Counter, "result=\"incompatible\"", "";
    TlsMisbehaved => "herald_tls_handshakes_total", Counter, "result=\"misbehaved\"", "";
    TlsNoAlpn => "herald_tls_handshakes_total", Counter, "result=\"no_alpn\"", "";
    TlsAlertReceived => "herald_tls_handshakes_total", Counter, "result=\"alert_received\"", "";
    TlsDecryptError => "herald_tls_handshakes_total", Counter, "result=\"decrypt_error\"", "";
    TlsUnexpected => "herald_tls_handshakes_total", Counter, "result=\"unexpected_message\"", "";
    TlsRefused => "herald_tls_handshakes_total", Counter, "result=\"refused\"", "";
    TlsOther => "herald_tls_handshakes_total", Counter, "result=\"other\"", "";
    TlsFull => "herald_tls_sessions_total", Counter, "kind=\"full\"", "Completed TLS handshakes: full, or resumed from a session ticket.";
    TlsResumed => "herald_tls_sessions_total", Counter, "kind=\"resumed\"", "";
    Tls13 => "herald_tls_protocol_total", Counter, "version=\"1.3\"", "Completed TLS handshakes, by protocol version.";
    Tls12 => "herald_tls_protocol_total", Counter, "version=\"1.2\"", "";
    TlsErrors => "herald_tls_errors_total", Counter, "", "TLS connections ended by a TLS error after the handshake (bad record, unexpected message).";
    TlsReloadOk => "herald_tls_cert_reloads_total", Counter, "result=\"ok\"", "Certificate reloads on SIGHUP, by result (a failed one keeps the old certificate).";
    TlsReloadFailed => "herald_tls_cert_reloads_total", Counter, "result=\"failed\"", "";
    ConnectionsOpen => "herald_connections_open", Gauge, "", "Open connections (all phases), per worker.";
    WebSocketsOpen => "herald_websockets_open", Gauge, "", "Open WebSocket connections, per worker.";
    Subscriptions => "herald_subscriptions", Gauge, "", "Subscriptions held, per worker.";
    Topics => "herald_topics", Gauge, "", "Topics with local subscribers (what max_topics_per_worker caps), per worker.";
    TopicsKnown => "herald_topics_known", Gauge, "", "Topics the worker indexes: its own and those only other workers' clients use, per worker.";
    TimerChecks => "herald_timer_checks_total", Counter, "", "Connections the timer looked at because one of their deadlines (handshake, close, idle, ping, auth) was due: the timer's work, which does not grow with idle connections.";
    OutboxBytes => "herald_outbox_bytes", Gauge, "", "Bytes queued for writing, per worker (sampled each loop turn).";
    ReceiveBytes => "herald_receive_buffer_bytes", Gauge, "", "Memory held for partly received requests and messages, per worker.";
    TlsOpen => "herald_tls_connections", Gauge, "", "Open TLS connections (handshaking or established), per worker.";
    PooledReadBuffers => "herald_read_buffers_pooled", Gauge, "", "Spare read buffers held by the worker's pool (shrinks back after load).";
    UringSendsInFlight => "herald_uring_sends_in_flight", Gauge, "", "Sends handed to the kernel and not yet completed, per worker (uring backend).";
    ClusterPublishesSent => "herald_cluster_publishes_total", Counter, "result=\"sent\"", "Publishes for Redis, by result: sent (acknowledged by Redis), failed (refused by Redis, or unacknowledged when a link dropped), dropped (queue full, on_overflow drop: delivered locally only), rejected (queue full, on_overflow reject).";
    ClusterPublishesFailed => "herald_cluster_publishes_total", Counter, "result=\"failed\"", "";
    ClusterPublishesDropped => "herald_cluster_publishes_total", Counter, "result=\"dropped\"", "";
    ClusterPublishesRejected => "herald_cluster_publishes_total", Counter, "result=\"rejected\"", "";
    ClusterMessagesReceived => "herald_cluster_messages_received_total", Counter, "", "Messages received from Redis (this node's own, which are dropped, included; probes not).";
    ClusterForeignDelivered => "herald_cluster_foreign_messages_total", Counter, "", "Messages from other nodes handed to the workers for delivery.";
    ClusterGaps => "herald_cluster_gaps_total", Counter, "", "Gaps reported, per topic: messages from another node lost (sequence jump, or a Redis link that dropped).";
    ClusterGapCloses => "herald_cluster_gap_closes_total", Counter, "", "Raw subscribers closed with 4410 on a gap (cluster.on_gap close).";
    ClusterReconnects => "herald_cluster_reconnects_total", Counter, "", "Redis links dropped, stalled or failed to connect, each followed by a reconnection.";
    ClusterShards => "herald_cluster_redis_instances", Node, "", "Redis instances configured.";
    ClusterLinksUp => "herald_cluster_redis_instances_up", Node, "", "Redis instances with both links up (the others are degraded; see /healthz).";
    ClusterChannels => "herald_cluster_subscribed_channels", Node, "", "Redis channels this node subscribes to (topics with local subscribers, and those lingering).";
    ClusterQueueDepth => "herald_cluster_queue_depth", Node, "", "Publishes waiting to be written to Redis (at most cluster.max_pending).";
    ClusterProbeRttMicros => "herald_cluster_probe_rtt_microseconds", Node, "", "Round trip of the last stall probe through Redis.";
}

impl Metric {
    /// The counter for a close code sent.
    pub fn close_code(code: u16) -> Metric {
        match code {
            1000 => Metric::Close1000,
            1001 => Metric::Close1001,
            1002 => Metric::Close1002,
            1003 => Metric::Close1003,
            1007 => Metric::Close1007,
            1008 => Metric::Close1008,
            1009 => Metric::Close1009,
            1011 => Metric::Close1011,
            4401 => Metric::Close4401,
            4403 => Metric::Close4403,
            _ => Metric::CloseOther,
        }
    }

    /// The counter for a TLS handshake that ended with `reason` (a [`crate::tls::TlsError::reason`] label,
    /// or `timeout`, `eof`, `not_tls`, `refused`).
    pub fn tls_failure(reason: &str) -> Metric {
        match reason {
            "timeout" => Metric::TlsTimeout,
            "eof" => Metric::TlsEof,
            "not_tls" => Metric::TlsNotTls,
            "invalid_message" => Metric::TlsInvalidMessage,
            "incompatible" => Metric::TlsIncompatible,
            "misbehaved" => Metric::TlsMisbehaved,
            "no_alpn" => Metric::TlsNoAlpn,
            "alert_received" => Metric::TlsAlertReceived,
            "decrypt_error" => Metric::TlsDecryptError,
            "unexpected_message" => Metric::TlsUnexpected,
            "refused" => Metric::TlsRefused,
            _ => Metric::TlsOther,
        }
    }

    /// The counter for a request refused before the upgrade with `status`.
    pub fn failed_status(status: u16) -> Metric {
        match status {
            400 => Metric::Failed400,
            401 => Metric::Failed401,
            403 => Metric::Failed403,
            404 => Metric::Failed404,
            405 => Metric::Failed405,
            413 => Metric::Failed413,
            426 => Metric::Failed426,
            431 => Metric::Failed431,
            503 => Metric::Failed503,
            _ => Metric::FailedOther,
        }
    }
}

/// A worker's own values: plain integers, touched only by that worker's thread.
#[derive(Debug, Clone)]
pub struct Counters {
    values: [u64; SERIES],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { values: [0; SERIES] }
    }
}

impl Counters {
    /// Adds one.
    #[inline]
    pub fn inc(&mut self, m: Metric) {
        self.values[m as usize] += 1;
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&mut self, m: Metric, n: u64) {
        self.values[m as usize] += n;
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(&mut self, m: Metric, v: u64) {
        self.values[m as usize] = v;
    }

    /// Subtracts `n` from a gauge (saturating).
    #[inline]
    pub fn sub(&mut self, m: Metric, n: u64) {
        let v = &mut self.values[m as usize];
        *v = v.saturating_sub(n);
    }

    /// The current value.
    pub fn get(&self, m: Metric) -> u64 {
        self.values[m as usize]
    }

    /// Copies every value into the worker's shared slot (once per loop turn).
    pub fn publish(&self, slot: &WorkerSlot) {
        for (cell, v) in slot.values.iter().zip(self.values.iter()) {
            cell.store(*v, Ordering::Relaxed);
        }
    }
}

/// The shared copy of one worker's values, read by scrapes.
#[derive(Debug)]
pub struct WorkerSlot {
    values: [AtomicU64; SERIES],
}

impl Default for WorkerSlot {
    fn default() -> Self {
        WorkerSlot { values: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl WorkerSlot {
    /// The last published value of `m`.
    pub fn get(&self, m: Metric) -> u64 {
        self.values[m as usize].load(Ordering::Relaxed)
    }
}

/// Renders every worker's slot in the Prometheus text exposition format (version 0.0.4): counters summed over
/// workers, gauges per worker with a `worker` label.
pub fn render(slots: &[WorkerSlot]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let mut last_family = "";
    for (metric, family, kind, labels, help) in TABLE.iter() {
        if *family != last_family {
            let help = if help.is_empty() { "See README." } else { help };
            let kind_name = match kind {
                Kind::Counter => "counter",
                Kind::Gauge | Kind::Node => "gauge",
            };
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind_name}");
            last_family = family;
        }
        match kind {
            Kind::Counter | Kind::Node => {
                let total: u64 = slots.iter().map(|s| s.get(*metric)).sum();
                if labels.is_empty() {
                    let _ = writeln!(out, "{family} {total}");
                } else {
                    let _ = writeln!(out, "{family}{{{labels}}} {total}");
                }
            }
            Kind::Gauge => {
                for (i, slot) in slots.iter().enumerate() {
                    let _ = writeln!(out, "{family}{{worker=\"{i}\"}} {}", slot.get(*metric));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_workers_and_gauges_kept_per_worker() {
        let slots = [WorkerSlot::default(), WorkerSlot::default()];
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.add(Metric::Deliveries, 5);
        b.add(Metric::Deliveries, 7);
        a.set(Metric::ConnectionsOpen, 3);
        b.set(Metric::ConnectionsOpen, 4);
        b.inc(Metric::Close1009);
        a.publish(&slots[0]);
        b.publish(&slots[1]);
        let text = render(&slots);
        assert!(text.contains("herald_deliveries_total 12\n"), "{text}");
        assert!(text.contains("herald_connections_open{worker=\"0\"} 3\n"), "{text}");
        assert!(text.contains("herald_connections_open{worker=\"1\"} 4\n"), "{text}");
        assert!(text.contains("herald_close_codes_sent_total{code=\"1009\"} 1\n"), "{text}");
    }

    #[test]
    fn each_family_has_one_help_and_type_line() {
        let text = render(&[WorkerSlot::default()]);
        let types = text.lines().filter(|l| l.starts_with("# TYPE herald_close_codes_sent_total ")).count();
        assert_eq!(types, 1);
    }

    #[test]
    fn label_helpers_map_known_and_unknown_codes() {
        assert_eq!(Metric::close_code(1008), Metric::Close1008);
        assert_eq!(Metric::close_code(4000), Metric::CloseOther);
        assert_eq!(Metric::failed_status(431), Metric::Failed431);
        assert_eq!(Metric::failed_status(418), Metric::FailedOther);
    }
}
