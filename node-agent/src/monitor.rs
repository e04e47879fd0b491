//! Perf-ring readers: one thread per CPU reads raw flow events and hands them on without ever
//! blocking. Samples the kernel could not write (ring full) and samples our queue had no room for
//! are counted and handed on as lost-event notices.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use aya::maps::MapData;
use aya::maps::perf::PerfEventArray;
use bytes::BytesMut;
use periscope_datapath_common::{EVENT_VERSION, FlowEvent};
use tokio::sync::mpsc;

/// What the readers deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// A flow event.
    Sample(FlowEvent),
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

/// Running readers; dropping it stops them.
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<MonitorStats>,
}

impl Readers {
    /// Opens the per-CPU rings of `events` (`pages` pages each) and starts one reader per CPU,
    /// delivering into `tx` with `try_send` (a full queue counts a loss, never blocks).
    pub fn start(
        mut events: PerfEventArray<MapData>,
        pages: usize,
        tx: mpsc::Sender<RawEvent>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(MonitorStats::default());
        let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
        let mut threads = Vec::new();
        for cpu in cpus {
            let mut buf = events
                .open(cpu, Some(pages))
                .map_err(std::io::Error::other)?;
            let (stop, stats, tx) = (stop.clone(), stats.clone(), tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("perf-reader-{cpu}"))
                .spawn(move || {
                    let mut out: Vec<BytesMut> = (0..64)
                        .map(|_| BytesMut::with_capacity(std::mem::size_of::<FlowEvent>() + 64))
                        .collect();
                    let fd = buf.as_raw_fd();
                    while !stop.load(Ordering::Relaxed) {
                        let mut pfd = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
                        if rc <= 0 {
                            continue;
                        }
                        while buf.readable() {
                            let Ok(r) = buf.read_events(&mut out) else {
                                break;
                            };
                            if r.lost > 0 {
                                stats.lost_ring.fetch_add(r.lost as u64, Ordering::Relaxed);
                                if tx
                                    .try_send(RawEvent::Lost {
                                        cpu,
                                        count: r.lost as u64,
                                    })
                                    .is_err()
                                {
                                    stats.lost_queue.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            for b in out.iter().take(r.read) {
                                stats.read.fetch_add(1, Ordering::Relaxed);
                                match parse_sample(b) {
                                    Some(ev) => {
                                        if tx.try_send(RawEvent::Sample(ev)).is_err() {
                                            stats.lost_queue.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    None => {
                                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            if r.read == 0 && r.lost == 0 {
                                break;
                            }
                        }
                    }
                })?;
            threads.push(t);
        }
        Ok(Readers {
            stop,
            threads,
            stats,
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
