//! Opening connections: dialing at the connect rate, the upgrade request (with the run's token in its
//! carrier), connect timeouts, and what a connection asks for right after its upgrade (the auth message and,
//! on herald's JSON endpoint, the subscribe) before it counts as open.

use std::sync::atomic::Ordering;

use herald::protocol::frame::{write_masked_frame, OpCode};
use mio::{Interest, Token};

use super::Worker;
use crate::client::{classify_io, Handshake};
use crate::engine::{Conn, Dial, Kind, Load, State, DIAL_BATCH};
use crate::json;
use crate::scan::Scanner;
use crate::stats::{self, Failure};
use crate::tls::Stream;

impl Worker {
    /// Dials the connections that are due under the connect rate.
    pub(super) fn dial_due(&mut self) {
        let mut budget = DIAL_BATCH;
        self.dial_blocked = false;
        while budget > 0 && self.now >= self.next_dial_ns && !self.to_dial.is_empty() {
            // `--tls-resume`: a connection dialed before a ticket is in the store would make a full handshake,
            // so while handshakes are under way (each brings tickets) the next dial waits for a ticket. With
            // none under way, it goes ahead (the first connection, or a server that sends no tickets).
            if self.tls.as_ref().is_some_and(|t| !t.has_ticket()) && self.handshaking() > 0 {
                self.dial_blocked = true;
                break;
            }
            let Some(dial) = self.to_dial.pop_front() else { break };
            let kind = dial.kind;
            budget -= 1;
            self.next_dial_ns = if self.dial_interval_ns == 0 {
                self.now
            } else {
                self.next_dial_ns.max(self.now.saturating_sub(self.dial_interval_ns)) + self.dial_interval_ns
            };
            let shared = self.shared.clone();
            let progress = &shared.progress[self.id];
            let session = match self.tls.as_ref().map(|tls| tls.session()).transpose() {
                Ok(session) => session,
                Err(e) => {
                    self.connect_failures.count(classify_io(&e));
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    self.on_gone(kind, false);
                    continue;
                }
            };
            let pub_endpoints = self.endpoints.len() - self.sub_endpoints;
            let publisher = matches!(kind, Kind::Pub(_));
            let endpoint = crate::plan::endpoint_of(publisher, dial.index, self.sub_endpoints, pub_endpoints);
            let mut sock = match self.endpoints[endpoint].0.dial() {
                Ok(sock) => sock,
                Err(e) => {
                    self.connect_failures.count(classify_io(&e));
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    self.on_gone(kind, false);
                    continue;
                }
            };
            let nonce_a = self.next_random().to_le_bytes();
            let nonce_b = self.next_random().to_le_bytes();
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&nonce_a);
            nonce[8..].copy_from_slice(&nonce_b);
            let entry = self.conns.vacant_entry();
            let token = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE)
            {
                self.connect_failures.count(classify_io(&e));
                progress.failed.fetch_add(1, Ordering::Relaxed);
                self.on_gone(kind, false);
                continue;
            }
            let (path, header) = match (&self.auth, &dial.token) {
                (Some(auth), Some(token)) => auth.upgrade(&dial.path, token),
                _ => (dial.path.clone(), None),
            };
            let origin = self.origin.as_deref().map(|o| ("Origin", o));
            let deflate = self.compress.then_some(("Sec-WebSocket-Extensions", crate::inflate::OFFER));
            let extra: Vec<(&str, &str)> = header
                .as_ref()
                .map(|(name, value)| (*name, value.as_str()))
                .into_iter()
                .chain(origin)
                .chain(deflate)
                .collect();
            let handshake = Handshake::new(&self.endpoints[endpoint].1, &path, nonce, &extra);
            let prefix = if dial.json { json::PREFIX_LEN } else { crate::plan::payload::HEADER_LEN };
            entry.insert(Conn {
                stream: Stream::new(sock, session),
                kind,
                json: dial.json,
                state: State::Handshaking(Box::new((handshake, dial))),
                dialed_ns: self.now,
                scanner: Scanner::new(prefix),
                inflater: None,
                out: Vec::new(),
                out_pos: 0,
                write_blocked: false,
            });
            // The request is written once the connect completes (the socket turns writable).
            self.in_progress.push(token);
        }
    }

    /// Connections dialed whose handshake is not done yet.
    fn handshaking(&self) -> usize {
        self.in_progress
            .iter()
            .filter(|&&t| self.conns.get(t).is_some_and(|c| matches!(c.state, State::Handshaking(_))))
            .count()
    }

    /// Fails connections that have not opened within the connect timeout.
    pub(super) fn expire_connects(&mut self) {
        let now = self.now;
        let timeout = self.connect_timeout_ns;
        let mut expired = Vec::new();
        self.in_progress.retain(|&token| match self.conns.get(token) {
            Some(conn) if !conn.is_open() => {
                if now.saturating_sub(conn.dialed_ns) > timeout {
                    expired.push(token);
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
        for token in expired {
            self.close(token, Some(Failure::Timeout));
        }
    }

    /// The upgrade of connection `token` (made for `dial`) is done, and `rest` came after the 101: send the
    /// requests it makes first, then open it now, or once their acks arrive (JSON endpoint).
    pub(super) fn upgraded(&mut self, token: usize, dial: Dial, rest: &[u8]) {
        let masks = [(self.next_random() as u32).to_le_bytes(), (self.next_random() as u32).to_le_bytes()];
        let Some(conn) = self.conns.get_mut(token) else { return };
        let mut awaiting = 0;
        let auth = self.auth.as_deref();
        if let (Some(auth), Some(t)) = (auth, &dial.token) {
            if let Some(message) = auth.first_message(t) {
                write_masked_frame(&mut conn.out, true, OpCode::Text, &message, masks[0]);
                // The raw endpoints take it silently; the JSON endpoint acks it.
                awaiting += u32::from(dial.json);
            }
        }
        let message_token = match auth {
            Some(a) if a.per_message && dial.json => dial.token.clone(),
            _ => None,
        };
        if let Some(topic) = &dial.subscribe {
            let request = json::subscribe_request(topic, message_token.as_deref());
            write_masked_frame(&mut conn.out, true, OpCode::Text, &request, masks[1]);
            awaiting += 1;
        }
        conn.state = State::Setup { awaiting, message_token };
        if conn.pending() > 0 {
            if let Err(f) = conn.flush() {
                return self.close(token, Some(f));
            }
        }
        if awaiting == 0 {
            self.mark_open(token);
        }
        if !rest.is_empty() {
            self.process(token, rest, self.now);
        }
        // More may have arrived after the head: the edge is consumed, so read now.
        self.read(token);
    }

    /// Connection `token` is ready: count it, time it, hand it to the scenario.
    pub(super) fn mark_open(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else { return };
        let State::Setup { message_token, .. } = std::mem::replace(&mut conn.state, State::Open) else { return };
        let kind = conn.kind;
        stats::record(&mut self.connect_time, self.now.saturating_sub(conn.dialed_ns));
        let p = &self.shared.progress[self.id];
        p.connected.fetch_add(1, Ordering::Relaxed);
        p.open.fetch_add(1, Ordering::Relaxed);
        match &mut self.load {
            Load::Fanout(f) => f.on_open(kind, token, &self.shared, message_token.as_deref()),
            Load::Echo(e) => e.on_open(kind, token),
            Load::Idle(_) => {}
        }
    }
}
