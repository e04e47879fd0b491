//! The event pipeline: perf readers → decoder (raw event → `flow.Flow`, enriched from the
//! agent's state) → ring buffer → subscribers (gRPC streams), plus the optional stdout printer and
//! flow log. Nothing here blocks the perf readers: they hand over batches with `try_send`.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use periscope_proto::flow::{LostEvent, LostEventSource};
use prost::Message;
use tokio::sync::{RwLock, mpsc};

use crate::accounting::Accountant;
use crate::agent::State;
use crate::decoder;
use crate::metrics::Metrics;
use crate::monitor::RawEvent;
use crate::ring::{Event, Ring};

/// How decoded flows are also written out.
pub struct Outputs {
    /// Print compact lines on stdout.
    pub compact: bool,
    /// Append length-delimited protobuf flows to this file.
    pub flow_log: Option<std::io::BufWriter<std::fs::File>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// JSON-lines flow export.
    pub exporter: Option<crate::export::Exporter>,
    /// The DNS enricher (names from observed DNS answers); `None` turns that enrichment off.
    pub dns: Option<crate::dns::DnsEnricher>,
}

impl Outputs {
    /// Opens the flow log file (append).
    pub fn open_flow_log(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(std::io::BufWriter::new(f))
    }
}

/// The lost-event notice for samples the perf ring of `cpu` overwrote.
pub fn perf_lost(cpu: u32, count: u64) -> Event {
    Event::Lost(LostEvent {
        source: LostEventSource::PerfEventRingBuffer as i32,
        num_events_lost: count,
        cpu: Some(cpu as i32),
    })
}

/// The lost-event notice for samples the decoder queue had no room for.
pub fn queue_lost(count: u64) -> Event {
    Event::Lost(LostEvent {
        source: LostEventSource::ObserverEventsQueue as i32,
        num_events_lost: count,
        cpu: None,
    })
}

/// Per-event state of the decoder stage: the byte accountant and the DNS enricher.
struct Stage<'a> {
    bytes: &'a mut Accountant,
    dns: &'a mut Option<crate::dns::DnsEnricher>,
}

/// Decodes one event, sets its byte and packet share and enriches it with DNS names (when the
/// DNS enricher is on).
fn flow(
    ev: &periscope_datapath_common::FlowEvent,
    payload: &[u8],
    st: &State,
    boot_offset: i128,
    stage: &mut Stage<'_>,
) -> Event {
    let mut f = decoder::decode(ev, st, boot_offset);
    (f.periscope_bytes, f.periscope_packets) = stage.bytes.share(ev);
    let dns = &mut *stage.dns;
    if let Some(d) = dns.as_mut() {
        d.enrich(&mut f, ev, payload);
    }
    Event::Flow(f)
}

/// Runs the decoder until the readers' channel closes.
pub async fn run(
    mut rx: mpsc::Receiver<Vec<RawEvent>>,
    state: Arc<RwLock<State>>,
    ring: Arc<Ring>,
    mut outputs: Outputs,
) {
    let boot_offset = decoder::boot_to_realtime_offset_ns();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut events = Vec::with_capacity(256);
    let mut bytes = Accountant::new();
    while let Some(first) = rx.recv().await {
        // Take whatever else is queued, and order it by time: the per-CPU rings are read
        // independently, so their events interleave out of order within a reader interval.
        let mut raws = first;
        while let Ok(more) = rx.try_recv() {
            raws.extend(more);
            if raws.len() >= 4096 {
                break;
            }
        }
        raws.sort_by_key(|r| match r {
            RawEvent::Sample(ev) | RawEvent::Captured(ev, _) => ev.ts_ns,
            RawEvent::Lost { .. } => 0,
        });
        {
            let st = state.read().await;
            let mut stage = Stage {
                bytes: &mut bytes,
                dns: &mut outputs.dns,
            };
            for raw in raws {
                events.push(match raw {
                    RawEvent::Sample(ev) => flow(&ev, &[], &st, boot_offset, &mut stage),
                    RawEvent::Captured(ev, payload) => {
                        flow(&ev, &payload, &st, boot_offset, &mut stage)
                    }
                    RawEvent::Lost { cpu, count } => perf_lost(cpu, count),
                });
            }
        }
        for e in &events {
            match e {
                Event::Flow(f) => {
                    outputs.metrics.observe(f);
                    if let Some(Err(e)) = outputs.exporter.as_mut().map(|x| x.flow(f)) {
                        tracing::warn!(error = %e, "flow export failed");
                    }
                    if let Some(w) = outputs.flow_log.as_mut() {
                        let _ = w.write_all(&f.encode_length_delimited_to_vec());
                    }
                    if outputs.compact {
                        let _ = writeln!(out, "{}", decoder::compact(f));
                    }
                }
                Event::Lost(l) => {
                    outputs.metrics.lost(l.source, l.num_events_lost);
                    if let Some(x) = outputs.exporter.as_mut() {
                        let _ = x.lost(l, "");
                    }
                    if outputs.compact {
                        let _ = writeln!(
                            out,
                            "LOST: {} events lost in the perf ring of CPU {}",
                            l.num_events_lost,
                            l.cpu.unwrap_or(-1)
                        );
                    }
                }
            }
        }
        ring.write_batch(events.drain(..));
        if rx.is_empty() {
            let _ = out.flush();
            if let Some(x) = outputs.exporter.as_mut() {
                x.flush();
            }
            if let Some(w) = outputs.flow_log.as_mut() {
                let _ = w.flush();
            }
        }
    }
}
