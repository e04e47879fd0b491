//! The perf-ring reader: one thread reads the raw flow events of every CPU and hands them on without ever
//! blocking. Samples the kernel could not write (ring full) and samples our queue had no room for
//! are counted and handed on as lost-event notices.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use periscope_datapath_common::{EVENT_VERSION, FlowEvent};
use tokio::sync::mpsc;

use crate::perf::PerfRing;

/// What the readers deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// A flow event.
    Sample(FlowEvent),
    /// A flow event followed by the packet bytes the datapath captured (DNS messages), from the
    /// Ethernet header on.
    Captured(FlowEvent, Box<[u8]>),
    /// The kernel's perf ring of `cpu` overwrote `count` samples.
    Lost {
        /// CPU of the ring.
        cpu: u32,
        /// Samples lost.
        count: u64,
    },
}

/// Counters of the readers.
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Samples read.
    pub read: AtomicU64,
    /// Samples the kernel reported lost (ring full).
    pub lost_ring: AtomicU64,
    /// Samples dropped because the decoder queue was full.
    pub lost_queue: AtomicU64,
    /// Samples with an unknown layout version or size.
    pub malformed: AtomicU64,
}

/// Decodes one perf sample into a [`FlowEvent`]; `None` for a short sample or another version.
pub fn parse_sample(buf: &[u8]) -> Option<FlowEvent> {
    if buf.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the buffer holds at least size_of::<FlowEvent>() bytes, FlowEvent is plain old
    // data (every bit pattern valid), and read_unaligned copes with any alignment.
    let ev: FlowEvent = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    (ev.version == EVENT_VERSION).then_some(ev)
}

/// Decodes one perf sample into a [`FlowEvent`] and the packet bytes captured after it (empty
/// when none, or when the sample is shorter than the event says).
pub fn parse_sample_with_payload(buf: &[u8]) -> Option<(FlowEvent, &[u8])> {
    let ev = parse_sample(buf)?;
    let start = std::mem::size_of::<FlowEvent>();
    let payload = buf
        .get(start..start + ev.cap_len as usize)
        .unwrap_or_default();
    Some((ev, payload))
}

/// The reader's value for one sample.
pub fn raw_event(buf: &[u8]) -> Option<RawEvent> {
    let (ev, payload) = parse_sample_with_payload(buf)?;
    Some(if payload.is_empty() {
        RawEvent::Sample(ev)
    } else {
        RawEvent::Captured(ev, payload.into())
    })
}

/// Samples read from one CPU's ring per pass.
const BATCH: usize = 128;
/// Sleep of the reader when every ring was empty.
pub const IDLE_SLEEP: std::time::Duration = std::time::Duration::from_millis(5);

/// Running readers; dropping it stops them.
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _map: MapData,
    /// Shared counters.
    pub stats: Arc<MonitorStats>,
}

impl Readers {
    /// Opens the per-CPU rings of `events` (`pages` pages each) and starts the reader, which
    /// delivers batches into `tx` with `try_send` (a full queue counts the batch's events as lost,
    /// it never blocks).
    ///
    /// One thread reads every CPU's ring in turn, like Cilium's single perf reader: a batch then
    /// holds the events of all CPUs from the same interval (the pipeline orders them by time),
    /// and an idle node costs one wake-up per interval, not one per CPU. The reader does not
    /// sleep in `poll()` (the kernel would wake it for every sample): it drains the rings and
    /// sleeps [`IDLE_SLEEP`] when they were all empty, which bounds the added latency while
    /// costing nothing per event.
    pub fn start(
        events: MapData,
        pages: usize,
        tx: mpsc::Sender<Vec<RawEvent>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(MonitorStats::default());
        let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
        let map_fd = events.fd().as_fd().as_raw_fd();
        let mut rings = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            rings.push((cpu, PerfRing::open(map_fd, cpu, pages)?));
        }
        let t = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("perf-reader".into())
                .spawn(move || read_loop(&mut rings, &stop, &stats, &tx))?
        };
        // The map fd stays open while the reader runs: the kernel removes the rings a map fd
        // registered when that fd is closed.
        Ok(Readers {
            stop,
            threads: vec![t],
            stats,
            _map: events,
        })
    }

    /// Stops the readers and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_loop(
    rings: &mut [(u32, PerfRing)],
    stop: &AtomicBool,
    stats: &MonitorStats,
    tx: &mpsc::Sender<Vec<RawEvent>>,
) {
    // The batch size follows the recent rate, so a batch is allocated once at the right size.
    let mut expect = BATCH;
    while !stop.load(Ordering::Relaxed) {
        if !rings.iter().any(|(_, r)| r.readable()) {
            std::thread::sleep(IDLE_SLEEP);
            continue;
        }
        let mut batch = Vec::with_capacity(expect);
        let (mut read, mut malformed) = (0u64, 0u64);
        for (cpu, ring) in rings.iter_mut() {
            let r = ring.read(BATCH, |raw| match raw_event(raw) {
                Some(ev) => batch.push(ev),
                None => malformed += 1,
            });
            if r.lost > 0 {
                stats.lost_ring.fetch_add(r.lost, Ordering::Relaxed);
                batch.push(RawEvent::Lost {
                    cpu: *cpu,
                    count: r.lost,
                });
            }
            read += r.samples as u64;
        }
        stats.malformed.fetch_add(malformed, Ordering::Relaxed);
        stats.read.fetch_add(read, Ordering::Relaxed);
        let n = batch.len();
        expect = (n + n / 4 + 1).clamp(8, BATCH * rings.len().max(1));
        if n > 0 && tx.try_send(batch).is_err() {
            stats.lost_queue.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_whole_samples_of_our_version() {
        let ev = FlowEvent {
            kind: 4,
            version: EVENT_VERSION,
            src_port: 80,
            ..Default::default()
        };
        // SAFETY: FlowEvent is plain old data.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(ev) };
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0, 0, 0, 0]); // perf pads samples to 8 bytes
        assert_eq!(parse_sample(&padded), Some(ev));
        assert_eq!(parse_sample(&bytes[..100]), None);
        let mut other = bytes;
        other[1] = EVENT_VERSION + 1;
        assert_eq!(parse_sample(&other), None);
    }
}
