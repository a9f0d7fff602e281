//! What a worker does with what the cluster bridge sends it: messages from other nodes, and gap notices.

use std::sync::Arc;

use super::conn::Phase;
use super::worker::{mark_dirty, Sink, Worker};
use crate::broker::index::SubKind;
use crate::cluster::{self, ForeignPublish, Kind};
use crate::metrics::Metric;
use crate::protocol::close::CloseCode;

impl Worker {
    /// Publishes a message from another node here, exactly as a local publish is framed and fanned out (to
    /// this worker's subscribers and the other workers'), without sending it back to Redis.
    pub(super) fn on_foreign(&mut self, f: &ForeignPublish) {
        let mut sink =
            Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits, &mut self.deflate);
        let json = match f.kind {
            Kind::Json => serde_json::from_slice::<&serde_json::value::RawValue>(&f.payload).ok(),
            _ => None,
        };
        let text = f.kind != Kind::Binary;
        self.index.publish(&f.topic, text, &f.payload, json, &mut sink, &mut self.mesh);
    }

    /// Queues the gap notice for the `/ws` subscribers of each topic (here and on the other workers).
    pub(super) fn on_gap(&mut self, topics: &[Arc<str>]) {
        let mut sink =
            Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits, &mut self.deflate);
        for t in topics {
            let notice = cluster::gap_notice(t);
            self.index.publish_notice(t, notice.as_bytes(), &mut sink, &mut self.mesh);
        }
    }

    /// `cluster.on_gap = "close"`: closes this worker's raw subscribers of each topic with 4410.
    pub(super) fn on_gap_close(&mut self, topics: &[Arc<str>]) {
        for t in topics {
            for key in self.index.local_subscribers(t, SubKind::Raw) {
                let Some(conn) = self.conns.get_mut(key) else { continue };
                if let Phase::WebSocket { core, .. } = &mut conn.phase {
                    if core.can_send() {
                        core.close(CloseCode(cluster::CLOSE_GAP), "messages lost");
                        self.metrics.inc(Metric::ClusterGapCloses);
                        mark_dirty(conn, key, &mut self.dirty);
                    }
                }
            }
        }
    }
}
