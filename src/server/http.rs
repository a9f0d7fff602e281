//! Requests before (or instead of) the upgrade: routing, the WebSocket upgrade, `/healthz`, `/metrics` and
//! `POST /publish/{topic}`, and every refusal with its proper HTTP status.

use std::net::IpAddr;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::conn::{Endpoint, JsonSubs, Phase, VIA_PROXY};
use super::worker::{mark_dirty, Worker};
use crate::broker::index::{ConnKey, IndexError, SubKind};
use crate::broker::topic;
use crate::control;
use crate::metrics::{self, Metric};
use crate::protocol::auth::policy::Need;
use crate::protocol::auth::{ConnAuth, Denied, Mode};
use crate::protocol::codec::DecodeLimits;
use crate::protocol::conn::Connection;
use crate::protocol::deflate;
use crate::protocol::handshake::{self, HandshakeError, Method, RequestHead};
use crate::protocol::proxy;

/// Where a request path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/echo` (WebSocket).
    Echo,
    /// `/sub/{topic}` (WebSocket).
    Sub(&'a str),
    /// `/pub/{topic}` (WebSocket).
    Pub(&'a str),
    /// `/ws` (WebSocket, JSON protocol).
    Ws,
    /// `/healthz` (GET).
    Healthz,
    /// `/metrics` (GET).
    Metrics,
    /// `/publish/{topic}` (POST).
    Publish(&'a str),
    /// Anything else.
    NotFound,
}

impl Route<'_> {
    /// Routes a path (without its query string).
    pub fn of(path: &str) -> Route<'_> {
        match path {
            "/echo" => Route::Echo,
            "/ws" => Route::Ws,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            _ => {
                if let Some(t) = path.strip_prefix("/sub/") {
                    Route::Sub(t)
                } else if let Some(t) = path.strip_prefix("/pub/") {
                    Route::Pub(t)
                } else if let Some(t) = path.strip_prefix("/publish/") {
                    Route::Publish(t)
                } else {
                    Route::NotFound
                }
            }
        }
    }

    fn is_websocket(self) -> bool {
        matches!(self, Route::Echo | Route::Sub(_) | Route::Pub(_) | Route::Ws)
    }
}

/// A refusal before the upgrade.
enum Refusal {
    /// An invalid upgrade request: its own response (with `Allow` or `Sec-WebSocket-Version` where due).
    Handshake(HandshakeError),
    /// Any other refusal: status and one-line reason.
    Plain(u16, &'static str),
    /// Refused by the auth policy (401 with `WWW-Authenticate`, or 403).
    Auth(Denied),
}

impl From<HandshakeError> for Refusal {
    fn from(e: HandshakeError) -> Self {
        Refusal::Handshake(e)
    }
}

impl Worker {
    /// Handles the request at the front of the read buffer. Returns true when the buffer should be processed
    /// again (the connection upgraded, or a keep-alive request was answered and more bytes wait).
    pub(super) fn process_http(&mut self, key: ConnKey) -> bool {
        let max_head = self.cfg.limits.max_request_head.bytes();
        self.req_path.clear();
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let head = match handshake::parse_request(&conn.rbuf, max_head) {
            Ok(None) => return false,
            Ok(Some(head)) => head,
            Err(e) => {
                self.refuse_request(key, &e);
                return false;
            }
        };
        let route = Route::of(&head.path);
        self.req_path.push_str(&head.path[..head.path.len().min(256)]);
        if !self.take_forwarded_client(key, &head) {
            return false;
        }
        if route.is_websocket() {
            return match self.upgrade(key, &head, route) {
                Ok(()) => true,
                Err(Refusal::Handshake(e)) => {
                    self.refuse_request(key, &e);
                    false
                }
                Err(Refusal::Plain(405, _)) => {
                    self.method_not_allowed(key, "GET");
                    false
                }
                Err(Refusal::Plain(status, why)) => {
                    self.respond(key, status, "text/plain", format!("{why}\n").as_bytes(), true);
                    false
                }
                Err(Refusal::Auth(denied)) => {
                    self.refuse_auth(key, &denied);
                    false
                }
            };
        }
        self.serve_http(key, &head, route)
    }

    /// For a request from a trusted proxy (when `proxy_protocol` is off), makes the client its
    /// `X-Forwarded-For` (or `Forwarded`) names the connection's address, or the proxy's own when it names
    /// none (each request on a kept-alive connection may come from another client). False when that client is
    /// already at `max_connections_per_ip`: the request is answered 503.
    fn take_forwarded_client(&mut self, key: ConnKey, head: &RequestHead) -> bool {
        if self.cfg.server.proxy_protocol {
            return true;
        }
        let Some(conn) = self.conns.get(key) else { return false };
        if conn.flags & VIA_PROXY == 0 {
            return true;
        }
        let proxies = &self.cfg.server.trusted_proxies;
        let named = proxy::forwarded_client(head, &|ip| proxies.contains(ip));
        let Some(client) = named.or_else(|| conn.stream.peer_addr().ok().map(|a| a.ip())) else { return true };
        if self.adopt_client(key, client).is_err() {
            self.refuse_over_limit(key, client);
            return false;
        }
        true
    }

    /// Answers 503 for a client (named by a trusted proxy) already at `max_connections_per_ip`, and closes;
    /// logged with the client's address (the connection's count stays with the proxy's until it goes).
    pub(super) fn refuse_over_limit(&mut self, key: ConnKey, client: IpAddr) {
        const WHY: &str = "per-address connection limit reached";
        self.metrics.inc(Metric::RejectedPerIp);
        self.metrics.inc(Metric::Failed503);
        self.log_refusal_from(Some(client), 503, WHY);
        let mut out = Vec::with_capacity(160);
        handshake::write_response(&mut out, 503, "text/plain", format!("{WHY}\n").as_bytes(), true);
        self.finish_with(key, out, true);
    }

    fn refuse_request(&mut self, key: ConnKey, e: &HandshakeError) {
        self.log_refusal(key, e.status(), &e.to_string());
        let mut out = Vec::with_capacity(192);
        e.write_response(&mut out);
        self.metrics.inc(Metric::failed_status(e.status()));
        self.finish_with(key, out, true);
    }

    /// Answers an auth refusal (401 with `WWW-Authenticate`, or 403) and closes.
    fn refuse_auth(&mut self, key: ConnKey, denied: &Denied) {
        self.metrics.inc(match denied {
            Denied::Unauthorized(_) => Metric::AuthUnauthorized,
            Denied::Forbidden => Metric::AuthForbidden,
            Denied::BadOrigin => Metric::AuthBadOrigin,
        });
        let challenge = denied.www_authenticate();
        let extra: Vec<(&str, &str)> = challenge.as_deref().map(|c| ("WWW-Authenticate", c)).into_iter().collect();
        let body = format!("{}\n", denied.reason());
        self.respond_with(key, denied.status(), &extra, "text/plain", body.as_bytes(), true);
    }

    /// Queues a response; with `close`, the connection ends once it is written.
    fn respond(&mut self, key: ConnKey, status: u16, content_type: &str, body: &[u8], close: bool) {
        self.respond_with(key, status, &[], content_type, body, close);
    }

    /// Answers 405 with the `Allow` header RFC 9110 15.5.6 requires, and closes.
    fn method_not_allowed(&mut self, key: ConnKey, allow: &str) {
        self.respond_with(key, 405, &[("Allow", allow)], "text/plain", b"method not allowed\n", true);
    }

    fn respond_with(
        &mut self,
        key: ConnKey,
        status: u16,
        extra: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
        close: bool,
    ) {
        let mut out = Vec::with_capacity(128 + body.len());
        handshake::write_response_with_headers(&mut out, status, extra, content_type, body, close);
        if status >= 400 {
            // The body is the one-line reason (for 401 and 403 too: the auth refusal's reason).
            self.log_refusal(key, status, String::from_utf8_lossy(body).trim_end());
            self.metrics.inc(Metric::failed_status(status));
        } else {
            self.metrics.inc(Metric::HttpRequests);
        }
        self.finish_with(key, out, close);
    }

    /// Logs a refused request at `info` (status, reason, peer, path; never the query, where tokens can be),
    /// within the worker's budget of such lines.
    fn log_refusal(&mut self, key: ConnKey, status: u16, reason: &str) {
        let peer = self.conns.get(key).map(|c| c.ip);
        self.log_refusal_from(peer, status, reason);
    }

    /// Logs a refused request from `peer`, within the budget.
    fn log_refusal_from(&mut self, peer: Option<IpAddr>, status: u16, reason: &str) {
        let Some(suppressed) = self.refusal_log.allow(self.now) else { return };
        let path = if self.req_path.is_empty() { "-" } else { self.req_path.as_str() };
        if suppressed > 0 {
            tracing::info!(worker = self.id, status, reason, peer = ?peer, path, suppressed, "request refused");
        } else {
            tracing::info!(worker = self.id, status, reason, peer = ?peer, path, "request refused");
        }
    }

    /// Queues `response`; with `close` the connection lingers until it is written and then ends, otherwise
    /// it waits for the next request.
    pub(super) fn finish_with(&mut self, key: ConnKey, response: Vec<u8>, close: bool) {
        let now = self.now;
        let close_timeout = self.cfg.timeouts.close_timeout.0;
        let handshake_timeout = self.cfg.timeouts.handshake_timeout.0;
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.outbox.push(Bytes::from(response));
        if close {
            conn.rbuf.clear();
            conn.phase = Phase::Closing { deadline: now + close_timeout };
        } else {
            conn.phase = Phase::Http { deadline: now + handshake_timeout };
        }
        mark_dirty(conn, key, &mut self.dirty);
    }

    fn upgrade(&mut self, key: ConnKey, head: &RequestHead, route: Route<'_>) -> Result<(), Refusal> {
        if !head.wants_upgrade() {
            return Err(if head.method == Method::Get {
                Refusal::Plain(400, "this endpoint needs a WebSocket upgrade")
            } else {
                Refusal::Plain(405, "method not allowed")
            });
        }
        let accept = head.validate_upgrade()?;
        if self.shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Refusal::Plain(503, "draining"));
        }
        let need = match route {
            Route::Sub(t) => Need::Subscribe(topic::validate(t).map_err(|_| bad_topic())?),
            Route::Pub(t) => Need::Publish(topic::validate(t).map_err(|_| bad_topic())?),
            _ => Need::Connect,
        };
        let admitted = self
            .auth
            .check_upgrade(head, need, route == Route::Ws, self.now, self.unix, &mut self.auth_mem)
            .map_err(Refusal::Auth)?;
        if let ConnAuth::Granted { .. } = &admitted.auth {
            self.metrics.inc(Metric::AuthOk);
            if admitted.cached {
                self.metrics.inc(Metric::AuthTokenCacheHits);
            }
            tracing::debug!(worker = self.id, key, sub = admitted.subject.as_deref(), "authenticated at the upgrade");
        }
        let awaiting = !admitted.auth.is_open();
        let endpoint = match route {
            Route::Echo => Endpoint::Echo,
            Route::Ws => Endpoint::Json(JsonSubs::new(self.now)),
            Route::Pub(t) => Endpoint::Pub(t.into()),
            Route::Sub(t) if awaiting => Endpoint::SubPending(t.into()),
            Route::Sub(t) => match self.index.subscribe(t, key, SubKind::Raw) {
                Ok(sub) => Endpoint::Sub(sub),
                // A /sub connection subscribes once in its life: the new-topic rate never applies to it.
                Err(IndexError::TooManyTopics | IndexError::RateLimited) => {
                    self.metrics.inc(Metric::TopicLimit);
                    return Err(Refusal::Plain(503, "too many topics on this worker"));
                }
            },
            _ => return Err(Refusal::Plain(404, "not found")),
        };
        let compression = &self.cfg.compression;
        let deflate = compression
            .enabled
            .then(|| deflate::negotiate(head.headers_named("sec-websocket-extensions"), compression.window_bits))
            .flatten();
        let mut out = Vec::with_capacity(256);
        let extensions = deflate.as_ref().map(|(_, answer)| answer.as_str());
        handshake::write_switching_protocols_with(&mut out, &accept, admitted.subprotocol, extensions);
        let mut core = Connection::new(self.now, &self.settings, key as u64);
        if let Some((agreement, _)) = deflate {
            core.set_deflate(agreement);
        }
        if awaiting {
            // Until the auth message, a client may make us buffer one token's worth, not max_message_size.
            let cap = (self.cfg.auth.max_token_size.0 + PRE_AUTH_ENVELOPE).min(self.settings.limits.max_message_size);
            core.set_limits(DecodeLimits {
                max_frame_size: cap.min(self.settings.limits.max_frame_size),
                max_message_size: cap,
            });
        }
        let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
        conn.auth = admitted.auth;
        let _ = conn.rbuf.split_to(head.head_len);
        conn.outbox.push(Bytes::from(out));
        conn.phase = Phase::WebSocket { core: Box::new(core), endpoint };
        mark_dirty(conn, key, &mut self.dirty);
        self.metrics.inc(Metric::Upgrades);
        self.metrics.inc(Metric::WebSocketsOpen);
        Ok(())
    }

    fn serve_http(&mut self, key: ConnKey, head: &RequestHead, route: Route<'_>) -> bool {
        let close = head.wants_close();
        let body_len = match head.content_length() {
            Ok(n) => n.unwrap_or(0),
            Err(e) => {
                self.refuse_request(key, &e);
                return false;
            }
        };
        match route {
            Route::Publish(t) => return self.serve_publish(key, head, t, body_len),
            _ if body_len > 0 => {
                // A body we do not want: answer, and close rather than parse it as the next request.
                self.respond(key, 400, "text/plain", b"unexpected request body\n", true);
                return false;
            }
            _ if head.method != Method::Get => {
                self.method_not_allowed(key, "GET");
                return false;
            }
            Route::Healthz => {
                let draining = self.shared.draining.load(std::sync::atomic::Ordering::Relaxed);
                let open = self.shared.open.load(std::sync::atomic::Ordering::Relaxed);
                let (mut status, state) = if draining { (503, "draining") } else { (200, "ok") };
                let cluster = match &self.shared.cluster {
                    Some(c) => {
                        if c.strict && c.degraded() {
                            status = 503;
                        }
                        format!(",\"cluster\":{}", c.healthz_json())
                    }
                    None => String::new(),
                };
                let body = format!(
                    "{{\"status\":\"{state}\",\"workers\":{},\"connections\":{open}{cluster}}}\n",
                    self.shared.workers
                );
                self.respond(key, status, "application/json", body.as_bytes(), close);
            }
            Route::Metrics => {
                self.metrics.publish(&self.shared.slots[self.id]);
                let mut body = metrics::render(&self.shared.slots);
                if let Some(c) = &self.shared.cluster {
                    body.push_str(&c.metrics_text());
                }
                self.respond(key, 200, "text/plain; version=0.0.4", body.as_bytes(), close);
            }
            _ => {
                self.respond(key, 404, "text/plain", b"not found\n", true);
                return false;
            }
        }
        self.consume_head(key, head.head_len, close)
    }

    /// Drops the answered request from the buffer; true when another (pipelined) request may follow.
    fn consume_head(&mut self, key: ConnKey, len: usize, close: bool) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if close {
            return false;
        }
        let _ = conn.rbuf.split_to(len.min(conn.rbuf.len()));
        !conn.rbuf.is_empty()
    }

    fn serve_publish(&mut self, key: ConnKey, head: &RequestHead, name: &str, body_len: u64) -> bool {
        if head.method != Method::Post {
            self.method_not_allowed(key, "POST");
            return false;
        }
        let Ok(name) = topic::validate(name) else {
            self.respond(key, 400, "text/plain", format!("{BAD_TOPIC}\n").as_bytes(), true);
            return false;
        };
        if head.content_length().ok().flatten().is_none() {
            self.respond(key, 411, "text/plain", b"Content-Length required\n", true);
            return false;
        }
        if let Err(denied) = self.auth.check_http_publish(head, name, self.unix, &mut self.auth_mem) {
            self.refuse_auth(key, &denied);
            return false;
        }
        if self.auth.mode() != Mode::None {
            self.metrics.inc(Metric::AuthOk);
        }
        if body_len > self.cfg.limits.max_message_size.0 {
            self.respond(key, 413, "text/plain", b"body larger than max_message_size\n", true);
            return false;
        }
        let need = head.head_len + body_len as usize;
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if conn.rbuf.len() < need {
            // RFC 9110 section 10.1.1: a server that receives "100-continue" "ought to" send 100 (Continue)
            // before reading the content, and "MUST ignore" it in an HTTP/1.0 request. The head is accepted
            // (method, topic, length, auth and size all passed), so ask for the body now: once, on the call
            // where the head is complete and no body byte has arrived yet (each later call has more bytes).
            // A client that sent its body anyway gets no 100, which 10.1.1 allows ("MAY omit").
            if conn.rbuf.len() == head.head_len && head.version == 1 && head.has_token("expect", "100-continue") {
                conn.outbox.push(Bytes::from_static(CONTINUE));
                mark_dirty(conn, key, &mut self.dirty);
            }
            return false; // the body is still arriving (bounded by max_message_size)
        }
        let body = conn.rbuf.split_to(need).freeze().slice(head.head_len..);
        let kind = BodyKind::of(head.header("content-type").unwrap_or(""));
        if kind != BodyKind::Binary && std::str::from_utf8(&body).is_err() {
            // A text frame must carry UTF-8: subscribers would otherwise fail with 1007.
            self.respond(key, 400, "text/plain", b"text body is not valid UTF-8\n", true);
            return false;
        }
        // A JSON body reaches /ws subscribers as the value itself (like a /ws publish's `data`), so it must be
        // JSON, and no deeper than a /ws publish may be. Borrowed from the body: nothing is built.
        let json = match kind {
            BodyKind::Json => match serde_json::from_slice::<&RawValue>(&body) {
                Ok(v) if control::json_depth_exceeds(v.get(), self.cfg.limits.max_json_depth) => {
                    self.metrics.inc(Metric::JsonDepthLimit);
                    let why = format!(
                        "JSON body nests arrays and objects more than {} deep (limits.max_json_depth)\n",
                        self.cfg.limits.max_json_depth
                    );
                    self.respond(key, 400, "text/plain", why.as_bytes(), true);
                    return false;
                }
                Ok(v) => Some(v),
                Err(e) => {
                    let why = format!("body is not valid JSON (Content-Type: application/json): {e}\n");
                    self.respond(key, 400, "text/plain", why.as_bytes(), true);
                    return false;
                }
            },
            BodyKind::Text | BodyKind::Binary => None,
        };
        if self.shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
            self.respond(key, 503, "text/plain", b"draining\n", true);
            return false;
        }
        self.metrics.inc(Metric::MessagesIn);
        self.metrics.inc(Metric::Publishes);
        let close = head.wants_close();
        let Ok(reached) = self.publish(name, kind != BodyKind::Binary, &body, json) else {
            self.respond(key, 503, "text/plain", b"the queue to the other nodes is full\n", true);
            return false;
        };
        let reply = format!("{{\"topic\":\"{name}\",\"subscribers\":{reached}}}\n");
        self.respond(key, 200, "application/json", reply.as_bytes(), close);
        let Some(conn) = self.conns.get_mut(key) else { return false };
        !close && !conn.rbuf.is_empty()
    }
}

/// The interim response to `Expect: 100-continue` (RFC 9110 section 15.2.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a POST body is, by its Content-Type's media type (parameters such as `charset` ignored, names
/// compared ASCII case-insensitively, RFC 9110 section 8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// `application/json`: must be valid JSON; `/ws` subscribers get the value as `data`.
    Json,
    /// `text/*`: must be UTF-8; a text frame, and a JSON string as `data`.
    Text,
    /// Anything else (or no Content-Type): a binary frame, and base64 as `data_b64`.
    Binary,
}

impl BodyKind {
    fn of(content_type: &str) -> BodyKind {
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if media_type.eq_ignore_ascii_case("application/json") {
            BodyKind::Json
        } else if media_type.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("text/")) {
            BodyKind::Text
        } else {
            BodyKind::Binary
        }
    }
}

/// Room for the JSON around a token in an auth message (`{"type":"auth","token":"...","id":...}`).
const PRE_AUTH_ENVELOPE: u64 = 1024;

const BAD_TOPIC: &str = "invalid topic: 1 to 128 bytes of A-Z a-z 0-9 . _ : -";

fn bad_topic() -> Refusal {
    Refusal::Plain(400, BAD_TOPIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_their_endpoints() {
        assert_eq!(Route::of("/echo"), Route::Echo);
        assert_eq!(Route::of("/sub/news"), Route::Sub("news"));
        assert_eq!(Route::of("/pub/a.b"), Route::Pub("a.b"));
        assert_eq!(Route::of("/publish/x"), Route::Publish("x"));
        assert_eq!(Route::of("/ws"), Route::Ws);
        assert_eq!(Route::of("/healthz"), Route::Healthz);
        assert_eq!(Route::of("/metrics"), Route::Metrics);
        assert_eq!(Route::of("/"), Route::NotFound);
        assert_eq!(Route::of("/echo/"), Route::NotFound);
    }

    #[test]
    fn post_bodies_are_json_text_or_binary_by_media_type() {
        for ct in ["application/json", "Application/JSON; charset=utf-8", " application/json ;x=y"] {
            assert_eq!(BodyKind::of(ct), BodyKind::Json, "{ct:?}");
        }
        for ct in ["text/plain", "TEXT/csv; charset=utf-8", "text/"] {
            assert_eq!(BodyKind::of(ct), BodyKind::Text, "{ct:?}");
        }
        for ct in ["", "application/octet-stream", "application/jsonp", "application/ld+json", "tex", "é"] {
            assert_eq!(BodyKind::of(ct), BodyKind::Binary, "{ct:?}");
        }
    }
}
