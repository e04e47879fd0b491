//! Bytes and packets per flow record (`Flow.periscope_bytes` / `periscope_packets`).
//!
//! The datapath does not report every packet: under monitor aggregation a connection is reported
//! when it opens, on its first reply, on new TCP flags and then every report interval, and each
//! trace carries the connection's counters so far (`ct_*_bytes` / `ct_*_packets`, both
//! directions, of the conntrack entry at that observation point). The accountant turns those
//! running totals into the share of each record, so that the records of a connection at one
//! observation point add up to its traffic:
//!
//! - a trace that is not a reply carries the connection's bytes and packets, both ways, since the
//!   previous such record of the same connection at the same observation point (the first one:
//!   everything so far). The service map counts records that are not replies, so every byte of a
//!   connection lands on its edge (source → destination), the replies' bytes included, up to the
//!   connection's last reported packet in the request direction;
//! - a reply carries 0 (its bytes go with the next record of the request direction);
//! - a trace without counters (none were kept) and a drop carry the packet itself;
//! - a policy verdict notification carries 0: the packet's trace or drop carries it.
//!
//! State: one small entry per connection and observation point, dropped when idle for
//! [`IDLE_NS`] (an idle connection's next record then carries its whole total again) and, past
//! [`MAX_CONNECTIONS`], the least recently reported ones first.
use std::collections::HashMap;

use periscope_datapath_common::{self as dp, EV_F_NEW, EV_F_REPLY, EV_F_REPLY_KNOWN, FlowEvent};

/// Connections idle this long (no record in the request direction) are forgotten: an hour, far
/// beyond the report interval (seconds) that keeps an active connection's entry fresh.
pub const IDLE_NS: u64 = 3_600 * 1_000_000_000;

/// Most connections remembered at once (about 64 bytes each).
pub const MAX_CONNECTIONS: usize = 1 << 18;

/// How often (in event time) idle entries are swept.
const SWEEP_EVERY_NS: u64 = 60 * 1_000_000_000;

/// A connection at one observation point, oriented as its records that are not replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    ep_id: u16,
    direction: u8,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
}

/// Totals at the connection's previous record, and when that was.
#[derive(Clone, Copy, Debug)]
struct Seen {
    bytes: u64,
    packets: u64,
    at_ns: u64,
}

/// Per-record shares of the connections' running totals (see the module docs).
#[derive(Debug, Default)]
pub struct Accountant {
    seen: HashMap<Key, Seen>,
    last_sweep_ns: u64,
}

impl Accountant {
    /// An empty accountant.
    pub fn new() -> Accountant {
        Accountant::default()
    }

    /// Connections remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no connection is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The (bytes, packets) the record of `ev` accounts for. Events must come in time order per
    /// connection (the pipeline sorts each batch by time).
    pub fn share(&mut self, ev: &FlowEvent) -> (u64, u64) {
        let own = (u64::from(ev.pkt_len), 1);
        match ev.kind {
            dp::msg::DROP => return own,
            dp::msg::TRACE => {}
            _ => return (0, 0),
        }
        let known = ev.flags & EV_F_REPLY_KNOWN != 0;
        if known && ev.flags & EV_F_REPLY != 0 {
            return (0, 0);
        }
        let total_packets = ev.ct_tx_packets.saturating_add(ev.ct_rx_packets);
        if !known || total_packets == 0 {
            return own;
        }
        let total_bytes = ev.ct_tx_bytes.saturating_add(ev.ct_rx_bytes);
        self.sweep(ev.ts_ns);
        let key = Key {
            ep_id: ev.ep_id,
            direction: ev.direction,
            proto: ev.proto,
            src_port: ev.src_port,
            dst_port: ev.dst_port,
            src_ip: ev.src_ip,
            dst_ip: ev.dst_ip,
        };
        let now = Seen {
            bytes: total_bytes,
            packets: total_packets,
            at_ns: ev.ts_ns,
        };
        let prev = self.seen.insert(key, now);
        match prev {
            // The same connection, its totals grown (or unchanged).
            Some(p)
                if ev.flags & EV_F_NEW == 0
                    && p.packets <= total_packets
                    && p.bytes <= total_bytes =>
            {
                (total_bytes - p.bytes, total_packets - p.packets)
            }
            // New (its tuple reused after the old entry expired), or first seen here.
            _ => (total_bytes, total_packets),
        }
    }

    /// Forgets idle connections (every [`SWEEP_EVERY_NS`] of event time), and the oldest ones
    /// when more than [`MAX_CONNECTIONS`] are remembered.
    fn sweep(&mut self, now_ns: u64) {
        if self.seen.len() >= MAX_CONNECTIONS {
            let mut ages: Vec<u64> = self.seen.values().map(|s| s.at_ns).collect();
            let half = ages.len() / 2;
            let (_, cut, _) = ages.select_nth_unstable(half);
            let cut = *cut;
            self.seen.retain(|_, s| s.at_ns > cut);
            tracing::debug!(
                kept = self.seen.len(),
                "byte accounting: too many connections, forgot the older half"
            );
        }
        if now_ns.saturating_sub(self.last_sweep_ns) < SWEEP_EVERY_NS {
            return;
        }
        self.last_sweep_ns = now_ns;
        self.seen
            .retain(|_, s| now_ns.saturating_sub(s.at_ns) < IDLE_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(reply: bool, tx: (u64, u64), rx: (u64, u64), ts_ns: u64) -> FlowEvent {
        let mut ev = FlowEvent {
            kind: dp::msg::TRACE,
            flags: EV_F_REPLY_KNOWN | if reply { EV_F_REPLY } else { 0 },
            proto: dp::proto::TCP,
            ep_id: 7,
            direction: dp::dir::INGRESS,
            pkt_len: 60,
            ts_ns,
            ct_tx_packets: tx.0,
            ct_tx_bytes: tx.1,
            ct_rx_packets: rx.0,
            ct_rx_bytes: rx.1,
            ..FlowEvent::default()
        };
        if reply {
            (ev.src_port, ev.dst_port) = (80, 40000);
        } else {
            (ev.src_port, ev.dst_port) = (40000, 80);
        }
        ev
    }

    #[test]
    fn records_of_a_connection_add_up_to_its_counters() {
        let mut a = Accountant::new();
        let mut first = trace(false, (1, 60), (0, 0), 1);
        first.flags |= EV_F_NEW;
        let records = [
            (first, (60, 1)),
            // The first reply: its bytes wait for the next request-direction record.
            (trace(true, (1, 60), (1, 60), 2), (0, 0)),
            (trace(false, (3, 652), (1, 60), 3), (652, 3)),
            // A periodic report with nothing new since.
            (trace(false, (3, 652), (1, 60), 4), (0, 0)),
            (trace(false, (5, 800), (4, 9060), 5), (9148, 5)),
        ];
        let mut sum = (0, 0);
        for (ev, want) in records {
            let got = a.share(&ev);
            assert_eq!(got, want, "record at {}", ev.ts_ns);
            sum = (sum.0 + got.0, sum.1 + got.1);
        }
        // The shares add up to the connection's last counters, both ways.
        assert_eq!(sum, (800 + 9060, 5 + 4));
    }

    #[test]
    fn a_reused_tuple_starts_over_and_observation_points_are_apart() {
        let mut a = Accountant::new();
        assert_eq!(
            a.share(&trace(false, (10, 5000), (10, 5000), 1)),
            (10000, 20)
        );
        let mut again = trace(false, (1, 60), (0, 0), 2);
        again.flags |= EV_F_NEW;
        assert_eq!(a.share(&again), (60, 1));
        // The same connection seen at the peer's egress is another entry.
        let mut other = trace(false, (2, 120), (1, 60), 3);
        other.direction = dp::dir::EGRESS;
        other.ep_id = 8;
        assert_eq!(a.share(&other), (180, 3));
        assert_eq!(a.len(), 2);
        // Counters that went backwards (a new entry the datapath did not flag): start over.
        assert_eq!(a.share(&trace(false, (0, 0), (1, 40), 4)), (40, 1));
    }

    #[test]
    fn drops_carry_their_packet_and_verdict_notifications_nothing() {
        let mut a = Accountant::new();
        let mut drop = trace(false, (0, 0), (0, 0), 1);
        drop.kind = dp::msg::DROP;
        drop.flags = 0;
        drop.pkt_len = 74;
        assert_eq!(a.share(&drop), (74, 1));
        let mut verdict = drop;
        verdict.kind = dp::msg::POLICY_VERDICT;
        assert_eq!(a.share(&verdict), (0, 0));
        // A trace without counters carries its own packet.
        let mut bare = trace(false, (0, 0), (0, 0), 2);
        bare.pkt_len = 98;
        assert_eq!(a.share(&bare), (98, 1));
        assert!(a.is_empty());
    }

    #[test]
    fn idle_connections_are_forgotten() {
        let mut a = Accountant::new();
        a.share(&trace(false, (1, 60), (0, 0), SWEEP_EVERY_NS));
        let mut later = trace(false, (1, 60), (0, 0), SWEEP_EVERY_NS + IDLE_NS + 1);
        later.src_port = 40001;
        a.share(&later);
        assert_eq!(a.len(), 1, "the idle entry is swept, the new one kept");
    }
}
