//! The time-ordered merge of the peers' streams.
//!
//! [`Merger`] is a bounded min-heap keyed by `(time, node, seq)` over items from many sources
//! (one per peer and request). It releases the smallest held item when it can no longer be
//! overtaken, or when waiting longer would break a bound:
//!
//! 1. **watermark**: every other open source either has an item held (so, if its stream is in
//!    time order, nothing older can come from it) or has been silent for the drain timeout (a
//!    quiet or stalled peer is not waited for);
//! 2. **drain timeout**: some held item has waited for the drain timeout (a bound on latency:
//!    the smallest items go until that one is out);
//! 3. **sort buffer**: some source holds more than `sort_buffer` items (a bound on memory: a fast
//!    peer never makes the relay hold more than `sort_buffer` of its items, whatever the others
//!    do).
//!
//! Hence the guarantees the property tests check: nothing is lost or duplicated; a released item
//! is never later than anything held at that moment; if every source delivers in time order and
//! neither bound forces a release, the output is in time order; no item is held longer than the
//! drain timeout; at most `sort_buffer` items per source (plus the one being pushed) are held.
//!
//! Requests without `follow` use [`Newest`] / [`Oldest`] instead: a heap bounded by `number`
//! that keeps the newest (or oldest) `number` items of everything it is given; or, with
//! `number` 0, [`All`], which keeps every item and gives them back as one sort would.
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies one input stream of a merge (the relay uses the peer id).
pub type SourceId = u64;

/// The sort key: event time in nanoseconds since the epoch, node name, arrival sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Event time, ns since the Unix epoch.
    pub time: i128,
    /// Name of the node the event comes from (ties at equal times); shared, not copied per
    /// item.
    pub node: Arc<str>,
    /// Arrival order (ties at equal time and node; keeps a node's order).
    pub seq: u64,
}

struct Held<T> {
    key: Key,
    source: SourceId,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

#[derive(Debug)]
struct Source {
    /// Items of this source currently held.
    held: usize,
    /// Last push (or the opening) of this source.
    last_push: Instant,
    /// Still delivering: waited for by the watermark.
    open: bool,
}

/// Why [`Merger::pop_ready`] released an item (for tests and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Nothing older can come any more: every other open source has an item held.
    Watermark,
    /// Every other open source has an item held or has been silent for the drain timeout.
    Idle,
    /// The item waited the drain timeout.
    Timeout,
    /// A source held more than the sort buffer.
    Full,
}

/// Bounded k-way merge of time-stamped items; see the module documentation.
pub struct Merger<T> {
    heap: BinaryHeap<Reverse<Held<T>>>,
    sources: HashMap<SourceId, Source>,
    /// Number of sources holding more than `sort_buffer` items.
    overfull: usize,
    sort_buffer: usize,
    drain: Duration,
    seq: u64,
    /// Arrival time of the items pushed since the oldest held one, in arrival (seq) order,
    /// each marked when released; the front is item `first_seq`.
    arrivals: VecDeque<(Instant, bool)>,
    first_seq: u64,
}

impl<T> Merger<T> {
    /// A merger holding at most `sort_buffer` (at least 1) items per source, none longer than
    /// `drain`.
    pub fn new(sort_buffer: usize, drain: Duration) -> Self {
        Merger {
            heap: BinaryHeap::new(),
            sources: HashMap::new(),
            overfull: 0,
            sort_buffer: sort_buffer.max(1),
            drain,
            seq: 0,
            arrivals: VecDeque::new(),
            first_seq: 1,
        }
    }

    /// Arrival time of the item held longest.
    fn oldest_arrival(&mut self) -> Option<Instant> {
        while self.arrivals.front().is_some_and(|(_, released)| *released) {
            self.arrivals.pop_front();
            self.first_seq += 1;
        }
        self.arrivals.front().map(|(at, _)| *at)
    }

    /// Starts waiting for `source` (again): until it delivers or stays silent for the drain
    /// timeout, older items of other sources are held back.
    pub fn open(&mut self, source: SourceId, now: Instant) {
        let s = self.sources.entry(source).or_insert(Source {
            held: 0,
            last_push: now,
            open: true,
        });
        s.open = true;
        s.last_push = now;
    }

    /// `source` delivers no more (its held items are still released in order).
    pub fn close(&mut self, source: SourceId) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.open = false;
        }
        self.forget_if_done(source);
    }

    fn forget_if_done(&mut self, source: SourceId) {
        if self
            .sources
            .get(&source)
            .is_some_and(|s| !s.open && s.held == 0)
        {
            self.sources.remove(&source);
        }
    }

    /// Adds an item of `source` at `time` (ns) from `node`. A source not opened before is opened.
    pub fn push(
        &mut self,
        source: SourceId,
        time: i128,
        node: impl Into<Arc<str>>,
        item: T,
        now: Instant,
    ) {
        let s = self.sources.entry(source).or_insert(Source {
            held: 0,
            last_push: now,
            open: true,
        });
        s.held += 1;
        s.last_push = now;
        if s.held == self.sort_buffer + 1 {
            self.overfull += 1;
        }
        self.seq += 1;
        self.arrivals.push_back((now, false));
        self.heap.push(Reverse(Held {
            key: Key {
                time,
                node: node.into(),
                seq: self.seq,
            },
            source,
            item,
        }));
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Why the smallest held item may be released at `now`, if it may.
    fn ready(&mut self, now: Instant) -> Option<Release> {
        if self.heap.is_empty() {
            return None;
        }
        if self.overfull > 0 {
            return Some(Release::Full);
        }
        if self
            .oldest_arrival()
            .is_some_and(|at| now.saturating_duration_since(at) >= self.drain)
        {
            return Some(Release::Timeout);
        }
        let Reverse(top) = self.heap.peek()?;
        let mut skipped_idle = false;
        for (id, s) in &self.sources {
            if *id != top.source && s.open && s.held == 0 {
                if now.saturating_duration_since(s.last_push) < self.drain {
                    return None;
                }
                skipped_idle = true;
            }
        }
        Some(if skipped_idle {
            Release::Idle
        } else {
            Release::Watermark
        })
    }

    /// Releases the smallest held item if it may go at `now` (see the module documentation).
    pub fn pop_ready(&mut self, now: Instant) -> Option<T> {
        self.pop_ready_why(now).map(|(item, _)| item)
    }

    /// [`Merger::pop_ready`], also telling why.
    pub fn pop_ready_why(&mut self, now: Instant) -> Option<(T, Release)> {
        let why = self.ready(now)?;
        Some((self.pop_min(), why))
    }

    fn pop_min(&mut self) -> T {
        let Reverse(h) = self.heap.pop().expect("a held item");
        if self.heap.is_empty() {
            self.arrivals.clear();
            self.first_seq = self.seq + 1;
        } else {
            self.arrivals[(h.key.seq - self.first_seq) as usize].1 = true;
        }
        if let Some(s) = self.sources.get_mut(&h.source) {
            if s.held == self.sort_buffer + 1 {
                self.overfull -= 1;
            }
            s.held -= 1;
        }
        self.forget_if_done(h.source);
        h.item
    }

    /// When an item may become releasable without any new input (None when nothing is held).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut at = self.oldest_arrival()? + self.drain;
        let Reverse(top) = self.heap.peek()?;
        for (id, s) in &self.sources {
            if *id != top.source && s.open && s.held == 0 {
                at = at.min(s.last_push + self.drain);
            }
        }
        Some(at)
    }

    /// Releases everything held, in key order (at the end of a stream).
    pub fn drain_all(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.heap.len());
        while !self.heap.is_empty() {
            out.push(self.pop_min());
        }
        out
    }
}

/// Keeps the newest `n` items (by key) of everything pushed; memory bounded by `n`.
pub struct Newest<T> {
    n: usize,
    heap: BinaryHeap<Reverse<(Key, Wrap<T>)>>,
    seq: u64,
}

/// Keeps the oldest `n` items (by key) of everything pushed; memory bounded by `n`.
pub struct Oldest<T> {
    n: usize,
    heap: BinaryHeap<(Key, Wrap<T>)>,
    seq: u64,
}

/// Keeps every item pushed (`number` 0 without `follow`: no bound but the request's range) and
/// gives them back in key order, as one sort of everything would. Items are kept per source and
/// each source's are sorted on their own — cheap, a peer's stream is in time order or nearly —
/// then the sources are merged, without moving the items more than that.
pub struct All<T> {
    sources: HashMap<SourceId, Vec<(Key, T)>>,
    seq: u64,
}

impl<T> Default for All<T> {
    fn default() -> Self {
        All {
            sources: HashMap::new(),
            seq: 0,
        }
    }
}

impl<T> All<T> {
    /// Keeps an item of `source`.
    pub fn push(&mut self, source: SourceId, time: i128, node: impl Into<Arc<str>>, item: T) {
        self.seq += 1;
        let key = Key {
            time,
            node: node.into(),
            seq: self.seq,
        };
        self.sources.entry(source).or_default().push((key, item));
    }

    /// Items kept.
    pub fn len(&self) -> usize {
        self.sources.values().map(Vec::len).sum()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.sources.values().all(Vec::is_empty)
    }

    /// The kept items, oldest first.
    pub fn into_sorted(self) -> Sorted<T> {
        let mut runs: Vec<_> = self
            .sources
            .into_values()
            .map(|mut v| {
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v.into_iter()
            })
            .collect();
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some((key, item)) = run.next() {
                heads.push(Reverse((key, i, Wrap(item))));
            }
        }
        Sorted { runs, heads }
    }
}

/// The items of [`All`] in key order: a k-way merge of its sorted sources.
pub struct Sorted<T> {
    runs: Vec<std::vec::IntoIter<(Key, T)>>,
    heads: BinaryHeap<Reverse<(Key, usize, Wrap<T>)>>,
}

impl<T> Iterator for Sorted<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let Reverse((_, i, Wrap(item))) = self.heads.pop()?;
        if let Some((key, next)) = self.runs[i].next() {
            self.heads.push(Reverse((key, i, Wrap(next))));
        }
        Some(item)
    }
}

/// An item that takes no part in the ordering (keys are unique by `seq`).
struct Wrap<T>(T);
impl<T> PartialEq for Wrap<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Wrap<T> {}
impl<T> PartialOrd for Wrap<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Wrap<T> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

fn limit(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl<T> Newest<T> {
    /// Keeps the newest `n` (0 = every item).
    pub fn new(n: u64) -> Self {
        Newest {
            n: if n == 0 { usize::MAX } else { limit(n) },
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Offers an item.
    pub fn push(&mut self, time: i128, node: impl Into<Arc<str>>, item: T) {
        self.seq += 1;
        let key = Key {
            time,
            node: node.into(),
            seq: self.seq,
        };
        if self.heap.len() >= self.n {
            // Full: only something newer than the oldest kept gets in.
            match self.heap.peek() {
                Some(Reverse((oldest, _))) if *oldest < key => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push(Reverse((key, Wrap(item))));
    }

    /// Items kept.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kept items, oldest first.
    pub fn into_sorted(self) -> Vec<T> {
        let mut v: Vec<_> = self.heap.into_iter().map(|Reverse(x)| x).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, Wrap(t))| t).collect()
    }
}

impl<T> Oldest<T> {
    /// Keeps the oldest `n` (0 = every item).
    pub fn new(n: u64) -> Self {
        Oldest {
            n: if n == 0 { usize::MAX } else { limit(n) },
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Offers an item.
    pub fn push(&mut self, time: i128, node: impl Into<Arc<str>>, item: T) {
        self.seq += 1;
        let key = Key {
            time,
            node: node.into(),
            seq: self.seq,
        };
        if self.heap.len() >= self.n {
            match self.heap.peek() {
                Some((newest, _)) if *newest > key => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push((key, Wrap(item)));
    }

    /// The kept items, oldest first.
    pub fn into_sorted(self) -> Vec<T> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|(_, Wrap(t))| t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DRAIN: Duration = Duration::from_millis(1000);

    #[test]
    fn waits_for_open_sources_then_releases_in_order() {
        let t0 = Instant::now();
        let mut m = Merger::new(10, DRAIN);
        m.open(1, t0);
        m.open(2, t0);
        m.push(1, 20, "a", "a20", t0);
        m.push(1, 30, "a", "a30", t0);
        assert_eq!(m.pop_ready(t0), None, "source 2 may still send older");
        assert_eq!(m.next_deadline(), Some(t0 + DRAIN));
        m.push(2, 10, "b", "b10", t0);
        assert_eq!(m.pop_ready_why(t0), Some(("b10", Release::Watermark)));
        assert_eq!(m.pop_ready(t0), None, "source 2 is empty again");
        // Source 2 stays silent: after the drain timeout source 1 is not held back any more.
        let later = t0 + DRAIN;
        assert_eq!(m.pop_ready_why(later), Some(("a20", Release::Timeout)));
        m.close(2);
        assert_eq!(m.pop_ready_why(later), Some(("a30", Release::Timeout)));
        assert!(m.is_empty());
    }

    #[test]
    fn a_closed_or_idle_source_is_not_waited_for() {
        let t0 = Instant::now();
        let mut m = Merger::new(10, DRAIN);
        m.open(1, t0);
        m.open(2, t0);
        m.close(2);
        m.push(1, 5, "a", 5, t0);
        assert_eq!(m.pop_ready_why(t0), Some((5, Release::Watermark)));
        // An idle (open) source is waited for only until the drain timeout after its last item.
        m.open(3, t0);
        let t1 = t0 + DRAIN / 2;
        m.push(1, 6, "a", 6, t1);
        assert_eq!(m.pop_ready(t1), None);
        assert_eq!(m.next_deadline(), Some(t0 + DRAIN));
        assert_eq!(m.pop_ready_why(t0 + DRAIN), Some((6, Release::Idle)));
    }

    #[test]
    fn a_full_source_forces_releases() {
        let t0 = Instant::now();
        let mut m = Merger::new(2, DRAIN);
        m.open(1, t0);
        m.open(2, t0);
        for t in 0..3 {
            m.push(1, t, "a", t, t0);
        }
        assert_eq!(m.pop_ready_why(t0), Some((0, Release::Full)));
        assert_eq!(m.pop_ready(t0), None, "back within the buffer");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn ties_keep_node_then_arrival_order() {
        let t0 = Instant::now();
        let mut m = Merger::new(10, DRAIN);
        m.push(1, 7, "b", "b1", t0);
        m.push(2, 7, "a", "a1", t0);
        m.push(1, 7, "b", "b2", t0);
        assert_eq!(m.drain_all(), ["a1", "b1", "b2"]);
    }

    #[test]
    fn newest_and_oldest_keep_n() {
        let mut n = Newest::new(3);
        let mut o = Oldest::new(3);
        for t in [5, 1, 9, 3, 7, 2, 8] {
            n.push(t, "x", t);
            o.push(t, "x", t);
        }
        assert_eq!(n.len(), 3);
        assert_eq!(n.into_sorted(), [7, 8, 9]);
        assert_eq!(o.into_sorted(), [1, 2, 3]);
        let mut all = Newest::new(0);
        for t in [3, 1, 2] {
            all.push(t, "x", t);
        }
        assert_eq!(all.into_sorted(), [1, 2, 3]);
    }

    /// One step of a random run: a push, a time step, an open or a close.
    #[derive(Clone, Debug)]
    enum Op {
        Push { source: u8, gap: u16 },
        Tick(u16),
        Open(u8),
        Close(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, 0u16..50).prop_map(|(source, gap)| Op::Push { source, gap }),
            2 => (0u16..700).prop_map(Op::Tick),
            1 => (0u8..4).prop_map(Op::Open),
            1 => (0u8..4).prop_map(Op::Close),
        ]
    }

    /// A test item: (time, source, id).
    type Item = (i128, u8, u64);
    type Check<'a> = &'a mut dyn FnMut(&mut Merger<Item>, Instant);

    /// Runs `ops` (per-source times increase by `gap`, or jump back when `sorted` is false),
    /// releasing after every step; returns (released items with their why, pushed items).
    fn run(
        ops: &[Op],
        sort_buffer: usize,
        sorted: bool,
        check: Check<'_>,
    ) -> (Vec<(Item, Release)>, Vec<Item>) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = Merger::new(sort_buffer, DRAIN);
        let mut clock = [0i128; 4];
        let mut id = 0u64;
        let mut pushed = Vec::new();
        let mut out = Vec::new();
        for op in ops {
            match *op {
                Op::Push { source, gap } => {
                    let c = &mut clock[source as usize];
                    *c = if sorted || gap % 7 != 0 {
                        *c + gap as i128
                    } else {
                        *c - gap as i128
                    };
                    id += 1;
                    let item = (*c, source, id);
                    pushed.push(item);
                    m.push(source as u64, *c, format!("n{source}"), item, now);
                }
                Op::Tick(ms) => now += Duration::from_millis(ms as u64),
                Op::Open(s) => m.open(s as u64, now),
                Op::Close(s) => m.close(s as u64),
            }
            while let Some(x) = m.pop_ready_why(now) {
                out.push(x);
            }
            check(&mut m, now);
        }
        out.extend(m.drain_all().into_iter().map(|x| (x, Release::Timeout)));
        (out, pushed)
    }

    proptest! {
        #[test]
        fn nothing_lost_or_duplicated(ops in prop::collection::vec(op(), 0..300), buf in 1usize..8) {
            let (out, pushed) = run(&ops, buf, false, &mut |_, _| {});
            let mut got: Vec<_> = out.into_iter().map(|(x, _)| x.2).collect();
            let mut want: Vec<_> = pushed.into_iter().map(|x| x.2).collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn bounded_memory_and_latency(ops in prop::collection::vec(op(), 0..300), buf in 1usize..8) {
            run(&ops, buf, false, &mut |m, now| {
                // At most `buf` per source after releasing (4 sources).
                assert!(m.len() <= 4 * buf, "{} held", m.len());
                for s in m.sources.values() {
                    assert!(s.held <= buf);
                }
                // Nothing older than the drain timeout stays held.
                if let Some(at) = m.oldest_arrival() {
                    assert!(now.duration_since(at) < DRAIN);
                }
            });
        }

        #[test]
        fn ordered_within_the_window(ops in prop::collection::vec(op(), 0..300), buf in 1usize..8) {
            // Every source open from the start and never closed (a closed source that comes
            // back is a new stream, which may start anywhere).
            let mut all: Vec<Op> = (0..4).map(Op::Open).collect();
            all.extend(ops.into_iter().filter(|o| !matches!(o, Op::Close(_) | Op::Open(_))));
            let (out, _) = run(&all, buf, true, &mut |_, _| {});
            // Sorted input per source: an item released by the watermark is never later than
            // any item released after it; only forced releases (buffer, timeout, an idle source
            // not waited for) may be overtaken.
            for (i, ((t, _, _), why)) in out.iter().enumerate() {
                if *why == Release::Watermark {
                    for ((later, _, _), _) in &out[i + 1..] {
                        prop_assert!(later >= t, "{:?} released before {:?}", t, later);
                    }
                }
            }
        }

        #[test]
        fn fully_sorted_without_forced_releases(
            pushes in prop::collection::vec((0u8..4, 0u16..50), 0..200),
        ) {
            // Every source open from the start, no time passing, a buffer that never fills:
            // the merge is exact.
            let mut ops: Vec<Op> = (0..4).map(Op::Open).collect();
            ops.extend(pushes.into_iter().map(|(source, gap)| Op::Push { source, gap }));
            let (out, _) = run(&ops, 1000, true, &mut |_, _| {});
            let times: Vec<(i128, String)> =
                out.iter().map(|((t, s, _), _)| (*t, format!("n{s}"))).collect();
            let mut sorted = times.clone();
            sorted.sort();
            prop_assert_eq!(times, sorted);
        }

        #[test]
        fn newest_is_the_tail_of_the_sorted_input(
            items in prop::collection::vec((0i128..100, 0u8..3), 0..100), n in 0u64..20,
        ) {
            let mut newest = Newest::new(n);
            let mut oldest = Oldest::new(n);
            let mut all = Vec::new();
            for (seq, (t, node)) in items.iter().enumerate() {
                newest.push(*t, format!("n{node}"), seq);
                oldest.push(*t, format!("n{node}"), seq);
                all.push(((*t, format!("n{node}"), seq), seq));
            }
            all.sort();
            let all: Vec<usize> = all.into_iter().map(|(_, s)| s).collect();
            let k = if n == 0 { all.len() } else { all.len().min(n as usize) };
            prop_assert_eq!(newest.into_sorted(), all[all.len() - k..].to_vec());
            prop_assert_eq!(oldest.into_sorted(), all[..k].to_vec());
        }

        #[test]
        fn all_is_one_sort_of_everything(
            items in prop::collection::vec((0i128..100, 0u8..3, 0u64..4), 0..300),
        ) {
            // Sources deliver out of order too; ties by node then arrival.
            let mut kept = All::default();
            let mut want = Newest::new(0);
            for (seq, (t, node, source)) in items.iter().enumerate() {
                kept.push(*source, *t, format!("n{node}"), seq);
                want.push(*t, format!("n{node}"), seq);
            }
            prop_assert_eq!(kept.len(), items.len());
            prop_assert_eq!(kept.into_sorted().collect::<Vec<_>>(), want.into_sorted());
        }
    }
}
