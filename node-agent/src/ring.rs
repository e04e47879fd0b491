//! The flow ring buffer (Hubble's model): a power-of-two number of slots, one writer, many
//! readers, a monotonically increasing write cursor. A reader that falls more than the capacity
//! behind is told how many events it lost and continues with the oldest event still held; it
//! never gets an error and never stalls the writer.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use periscope_proto::flow::{Flow, LostEvent};
use tokio::sync::watch;

/// One entry of the ring (a flow is boxed inside the ring's `Arc` anyway, so the size gap between
/// the variants costs nothing per slot).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A decoded flow.
    Flow(Flow),
    /// Events lost before they reached the ring (perf ring or observer queue).
    Lost(LostEvent),
}

impl Event {
    /// The flow, if this is one.
    pub fn flow(&self) -> Option<&Flow> {
        match self {
            Event::Flow(f) => Some(f),
            Event::Lost(_) => None,
        }
    }
}

/// A ring of `capacity` usable slots (`2^n − 1`, like Hubble's `--hubble-event-buffer-capacity`).
pub struct Ring {
    inner: RwLock<Inner>,
    written: AtomicU64,
    notify: watch::Sender<u64>,
    capacity: usize,
}

struct Inner {
    slots: Vec<Option<Arc<Event>>>,
    mask: u64,
}

/// What a read produced.
#[derive(Debug)]
pub enum Read {
    /// The event at the requested position.
    Event(Arc<Event>),
    /// The reader was overtaken: `lost` events are gone; continue at `next`.
    Lapped {
        /// Events overwritten before they were read.
        lost: u64,
        /// Oldest position still held.
        next: u64,
    },
    /// Nothing written at this position yet.
    NotYet,
}

/// Why a capacity was refused.
#[derive(Debug, thiserror::Error)]
#[error("ring buffer capacity {0} must be 2^n - 1 (1, 3, 7, …, 4095, …), between 1 and 2^30 - 1")]
pub struct CapacityError(pub usize);

impl Ring {
    /// A ring of `capacity` events (`2^n − 1`).
    pub fn new(capacity: usize) -> Result<Arc<Ring>, CapacityError> {
        let slots = capacity.checked_add(1).ok_or(CapacityError(capacity))?;
        if capacity == 0 || !slots.is_power_of_two() || slots > 1 << 30 {
            return Err(CapacityError(capacity));
        }
        let (notify, _) = watch::channel(0);
        Ok(Arc::new(Ring {
            inner: RwLock::new(Inner {
                slots: vec![None; slots],
                mask: slots as u64 - 1,
            }),
            written: AtomicU64::new(0),
            notify,
            capacity,
        }))
    }

    /// Usable capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events written since creation (the write cursor).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Events currently held.
    pub fn len(&self) -> usize {
        self.written().min(self.capacity as u64) as usize
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written() == 0
    }

    /// Oldest position still held.
    pub fn oldest(&self) -> u64 {
        self.written().saturating_sub(self.capacity as u64)
    }

    /// Appends events (one writer at a time).
    pub fn write_batch(&self, events: impl IntoIterator<Item = Event>) {
        let mut inner = self.inner.write().expect("ring lock");
        let mut w = self.written.load(Ordering::Relaxed);
        for e in events {
            let i = (w & inner.mask) as usize;
            inner.slots[i] = Some(Arc::new(e));
            w += 1;
        }
        self.written.store(w, Ordering::Release);
        drop(inner);
        self.notify.send_replace(w);
    }

    /// Appends one event.
    pub fn write(&self, e: Event) {
        self.write_batch(std::iter::once(e));
    }

    /// Reads the event at `pos`.
    pub fn read(&self, pos: u64) -> Read {
        let inner = self.inner.read().expect("ring lock");
        let w = self.written.load(Ordering::Acquire);
        if pos >= w {
            return Read::NotYet;
        }
        let oldest = w.saturating_sub(self.capacity as u64);
        if pos < oldest {
            return Read::Lapped {
                lost: oldest - pos,
                next: oldest,
            };
        }
        match &inner.slots[(pos & inner.mask) as usize] {
            Some(e) => Read::Event(e.clone()),
            None => Read::NotYet,
        }
    }

    /// Reads up to `max` events from `pos` on, appending to `out`; returns the next position and
    /// the number of events lost to lapping (0 if none).
    pub fn read_batch(&self, mut pos: u64, max: usize, out: &mut Vec<Arc<Event>>) -> (u64, u64) {
        let inner = self.inner.read().expect("ring lock");
        let w = self.written.load(Ordering::Acquire);
        let oldest = w.saturating_sub(self.capacity as u64);
        let mut lost = 0;
        if pos < oldest {
            lost = oldest - pos;
            pos = oldest;
        }
        while pos < w && out.len() < max {
            if let Some(e) = &inner.slots[(pos & inner.mask) as usize] {
                out.push(e.clone());
            }
            pos += 1;
        }
        (pos, lost)
    }

    /// Subscribes to write notifications (the value is the write cursor).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(n: u64) -> Event {
        Event::Flow(Flow {
            uuid: n.to_string(),
            ..Default::default()
        })
    }

    fn uuid(e: &Event) -> u64 {
        e.flow().unwrap().uuid.parse().unwrap()
    }

    #[test]
    fn capacity_must_be_power_of_two_minus_one() {
        assert!(Ring::new(4095).is_ok());
        assert!(Ring::new(1).is_ok());
        assert!(Ring::new(4096).is_err());
        assert!(Ring::new(0).is_err());
        assert!(Ring::new(usize::MAX).is_err());
    }

    #[test]
    fn readers_that_fall_behind_are_told_what_they_lost() {
        let r = Ring::new(7).unwrap();
        r.write_batch((0..20).map(flow));
        assert_eq!(r.len(), 7);
        assert_eq!(r.oldest(), 13);
        match r.read(2) {
            Read::Lapped { lost, next } => assert_eq!((lost, next), (11, 13)),
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        let (next, lost) = r.read_batch(0, 100, &mut out);
        assert_eq!((next, lost), (20, 13));
        assert_eq!(
            out.iter().map(|e| uuid(e)).collect::<Vec<_>>(),
            (13..20).collect::<Vec<_>>()
        );
        assert!(matches!(r.read(20), Read::NotYet));
    }

    proptest! {
        /// Whatever the interleaving of writes and reads, a reader sees every event exactly once
        /// in order, or is told precisely how many it lost.
        #[test]
        fn reader_sees_everything_or_counts_losses(
            cap_pow in 1u32..6,
            ops in proptest::collection::vec((0usize..20, 0usize..20), 1..60),
        ) {
            let r = Ring::new((1usize << cap_pow) - 1).unwrap();
            let mut next_write = 0u64;
            let mut pos = 0u64;
            let mut seen = 0u64;
            let mut lost_total = 0u64;
            for (writes, reads) in ops {
                r.write_batch((next_write..next_write + writes as u64).map(flow));
                next_write += writes as u64;
                let mut out = Vec::new();
                let (np, lost) = r.read_batch(pos, reads, &mut out);
                lost_total += lost;
                for (i, e) in out.iter().enumerate() {
                    prop_assert_eq!(uuid(e), pos + lost + i as u64);
                }
                seen += out.len() as u64;
                pos = np;
                prop_assert!(r.len() <= r.capacity());
            }
            let mut out = Vec::new();
            let (np, lost) = r.read_batch(pos, usize::MAX, &mut out);
            prop_assert_eq!(np, next_write);
            prop_assert_eq!(seen + out.len() as u64 + lost_total + lost, next_write);
        }
    }
}
