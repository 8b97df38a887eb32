//! Stage 0, admit: whether a reader message may be looked at at all, and, once it opens,
//! whether its batch is new. Everything about admitting a reader's traffic is here:
//! - before anything is decoded: the payload's size, the topic, a provisioned and enabled
//!   reader;
//! - the reader's message budget ([`charge`]), spent only by messages that open under the
//!   named reader's key (the embedded broker cannot stop one reader publishing on another's
//!   topic, so junk on a reader's topic must not spend that reader's budget and blind it).
//!   Messages that fail to open spend a separate, global budget of unauthentic traffic
//!   ([`unauthentic`]); past it they are counted as `unauthentic_flood`. Unsealed formats
//!   prove nothing about their sender (an external broker's ACL binds them to their topic),
//!   so they spend their reader's budget before they are parsed, as before;
//! - after [`crate::open`] (the reader's format and its seal): the seq window, each batch seq
//!   taken once ([`take_seq`]).
//!
//! The per-reader state (budget, seq window) is [`Admissions`], kept by the pipeline for
//! every provisioned reader that sent something; the registry's reader directory holds who a
//! reader is, not what it sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenplate_proto::v1::SightingBatch;
use greenplate_registry::readers::Format;
use greenplate_registry::{Reader, Readers, Registry, RegistryError, StoredSeqs, now_ms};
use tokio_util::sync::CancellationToken;

use crate::broker::Inbound;
use crate::rejection::Rejection;

/// One reader's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    /// Its message budget (the flood limit).
    pub budget: Mutex<TokenBucket>,
    /// Batch seqs taken (replay protection): a seq is taken before its batch is processed.
    pub seqs: Mutex<SeqWindow>,
    /// Batch seqs whose processing finished (from NATS: the message was settled); this is
    /// what is stored ([`persist_seqs`]) and what another node loads when it takes the
    /// reader over, so a batch in flight here when this node died is taken there.
    done: Mutex<SeqWindow>,
    /// `done` changed since it was last stored.
    dirty: AtomicBool,
}

impl Admission {
    fn from_stored(stored: &StoredSeqs) -> Self {
        let window = SeqWindow::from_stored(stored.highest, stored.window.as_deref());
        Self {
            seqs: Mutex::new(window.clone()),
            done: Mutex::new(window),
            ..Default::default()
        }
    }

    /// Records that the batch `seq` was processed all the way.
    pub fn finished(&self, seq: u64) {
        // Taken already in `seqs`; a seq too old for this window is simply not recorded.
        let _ = lock(&self.done).take(seq);
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether the batch `seq` was processed all the way (here, or by a node this one took
    /// the reader over from).
    pub fn is_finished(&self, seq: u64) -> bool {
        lock(&self.done).contains(seq)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every reader's [`Admission`], by reader id; an entry is made on a provisioned reader's
/// first message, so unknown ids cannot grow it.
#[derive(Debug, Default)]
pub struct Admissions {
    by_reader: papaya::HashMap<String, Arc<Admission>>,
    /// The global budget of messages that do not open under their reader's key.
    unauthentic: Mutex<TokenBucket>,
}

impl Admissions {
    /// Starts each reader's seq window from what is stored (at start, before any message),
    /// so a batch processed before a restart is refused as a replay after it.
    pub fn restore(&self, stored: impl IntoIterator<Item = StoredSeqs>) {
        let map = self.by_reader.pin();
        for s in stored {
            map.insert(s.reader_id.clone(), Arc::new(Admission::from_stored(&s)));
        }
    }

    /// Adds what is stored to the windows in memory (a seq processed by any node stays
    /// taken): when this node takes readers over from another, before it takes their
    /// messages.
    pub fn merge(&self, stored: impl IntoIterator<Item = StoredSeqs>) {
        let map = self.by_reader.pin();
        for s in stored {
            let window = SeqWindow::from_stored(s.highest, s.window.as_deref());
            match map.get(s.reader_id.as_str()) {
                Some(a) => {
                    lock(&a.seqs).merge(&window);
                    lock(&a.done).merge(&window);
                }
                None => {
                    map.insert(s.reader_id.clone(), Arc::new(Admission::from_stored(&s)));
                }
            }
        }
    }

    /// The readers whose finished seqs changed since they were last stored, with their
    /// windows; each is marked stored (a failed write marks them again, [`Self::unstored`]).
    fn unpersisted(&self) -> Vec<StoredSeqs> {
        self.by_reader
            .pin()
            .iter()
            .filter(|(_, a)| a.dirty.swap(false, Ordering::AcqRel))
            .map(|(id, a)| {
                let done = lock(&a.done);
                StoredSeqs {
                    reader_id: id.clone(),
                    highest: done.highest(),
                    window: Some(done.to_stored()),
                }
            })
            .collect()
    }

    fn unstored(&self, stored: &[StoredSeqs]) {
        let map = self.by_reader.pin();
        for s in stored {
            if let Some(a) = map.get(s.reader_id.as_str()) {
                a.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// The admission state of `reader` (made on first use).
    pub fn of(&self, reader: &Reader) -> Arc<Admission> {
        let map = self.by_reader.pin();
        if let Some(a) = map.get(reader.id.as_str()) {
            return a.clone();
        }
        map.get_or_insert_with(reader.id.clone(), Default::default)
            .clone()
    }
}

/// What [`admit`] checks a message against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger payloads are dropped unread.
    pub max_payload_bytes: usize,
    /// Each reader's message budget: this many a second, this many saved up at most.
    pub messages_per_s: f64,
    pub messages_burst: f64,
    /// The global budget of unauthentic messages, the same way.
    pub unauthentic_per_s: f64,
    pub unauthentic_burst: f64,
}

/// The checks before anything is decoded. Returns the reader and its admission state.
pub fn admit(
    readers: &Readers,
    admissions: &Admissions,
    limits: Limits,
    msg: &Inbound,
) -> Result<(Arc<Reader>, Arc<Admission>), Rejection> {
    if msg.payload.len() > limits.max_payload_bytes {
        return Err(Rejection::Oversized(msg.payload.len()));
    }
    let topic = std::str::from_utf8(&msg.topic).map_err(|_| Rejection::Topic)?;
    let id = greenplate_proto::topics::reader_of_sightings_topic(topic)
        .or_else(|| greenplate_proto::topics::reader_of_status_topic(topic))
        .ok_or(Rejection::Topic)?;
    let reader = enabled_reader(readers, id)?;
    let admission = admissions.of(&reader);
    if reader.format != Format::Sealed {
        // Nothing to authenticate: the topic (an external broker's ACL) names the sender.
        charge(&admission, limits)?;
    }
    Ok((reader, admission))
}

/// Spends one message of the reader's budget: for a sealed reader once its message opened
/// under its key, for an unsealed one before parsing ([`admit`]).
pub fn charge(admission: &Admission, limits: Limits) -> Result<(), Rejection> {
    let mut budget = admission.budget.lock().unwrap_or_else(|p| p.into_inner());
    if budget.take(now_ms(), limits.messages_per_s, limits.messages_burst) {
        Ok(())
    } else {
        Err(Rejection::Flood)
    }
}

/// A sealed reader's message did not open: it spends the global unauthentic budget, never
/// the reader's. Past that budget the rejection becomes [`Rejection::UnauthenticFlood`].
pub fn unauthentic(admissions: &Admissions, limits: Limits, rejection: Rejection) -> Rejection {
    let mut budget = admissions
        .unauthentic
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if budget.take(now_ms(), limits.unauthentic_per_s, limits.unauthentic_burst) {
        rejection
    } else {
        Rejection::UnauthenticFlood
    }
}

/// The provisioned, enabled reader `id`.
pub fn enabled_reader(readers: &Readers, id: &str) -> Result<Arc<Reader>, Rejection> {
    let reader = readers.get(id).ok_or(Rejection::UnknownReader)?;
    if !reader.enabled() {
        return Err(Rejection::ReaderDisabled);
    }
    Ok(reader)
}

/// Takes an opened batch's seq, once. Vendor formats have no batch counter (seq 0): their
/// re-sent reads fold into the tag's open pass instead, so they skip the window. Returns
/// how many of the reader's seqs were found missing ([`SeqWindow::take`]).
pub fn take_seq(
    admission: &Admission,
    reader: &Reader,
    batch: &SightingBatch,
) -> Result<u64, Rejection> {
    if batch.seq == 0 && reader.format != Format::Sealed {
        return Ok(0);
    }
    // Each seq once, late ones too while inside the window.
    let mut seqs = admission.seqs.lock().unwrap_or_else(|p| p.into_inner());
    seqs.take(batch.seq).map_err(|why| Rejection::Replay {
        seq: batch.seq,
        last: seqs.highest(),
        too_old: why == SeqRefusal::TooOld,
    })
}

/// Stores the readers' seq windows that changed, every `every` until `shutdown` (the last
/// ones are stored by [`flush_seqs`] once the workers have drained). A failed write is
/// logged and retried at the next round.
pub async fn persist_seqs(
    admissions: Arc<Admissions>,
    registry: Arc<Registry>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = flush_seqs(&admissions, &registry).await {
            tracing::warn!(error = %e, "Storing readers' seq windows failed; will retry.");
        }
    }
}

/// Stores the readers' seq windows that changed since they were last stored.
pub async fn flush_seqs(admissions: &Admissions, registry: &Registry) -> Result<(), RegistryError> {
    let changed = admissions.unpersisted();
    if changed.is_empty() {
        return Ok(());
    }
    registry
        .store_reader_seqs(&changed)
        .await
        .inspect_err(|_| admissions.unstored(&changed))
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// Takes one token at `now_ms` if there is one.
    pub fn take(&mut self, now_ms: i64, rate: f64, burst: f64) -> bool {
        if self.last_ms == 0 {
            self.tokens = burst;
        } else {
            let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * rate).min(burst);
        }
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which batch seqs of a reader were processed: the highest, and a bitmap of the 1,024
/// below it (anti-replay as in IPsec/DTLS). A seq is taken once; a seq older than the window
/// is refused. Unlike "greater than the last", a batch that arrives late (an external broker
/// redelivering an unacknowledged message, two nodes sharing a reader's traffic, or a node
/// draining a dead peer's session) is still taken if it was never processed. The window is
/// wide for that last case: a reader at one batch a second is covered for 17 minutes.
#[derive(Debug, Default, Clone)]
pub struct SeqWindow {
    highest: u64,
    /// The first seq taken: where counting missing seqs starts.
    first: u64,
    /// A ring: bit `seq % RING` set means `seq` was taken, for seqs in the window.
    taken: [u64; 17],
}

/// Why [`SeqWindow::take`] refused a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqRefusal {
    /// Already processed.
    Duplicate,
    /// Older than the window: cannot tell, so refused.
    TooOld,
}

impl SeqWindow {
    /// How far below the highest seq a late batch is still taken.
    pub const WIDTH: u64 = 1024;

    /// Slots in the ring: the highest and the WIDTH below it.
    const RING: u64 = Self::WIDTH + 1;

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % Self::RING;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Takes `seq` if it was not taken before. Returns how many seqs left the window with
    /// this take without ever having been taken: batches the reader numbered that never
    /// reached the pipeline (or were refused before their seq was read). Seqs below the
    /// first one this window saw are not counted: the window cannot know about them.
    pub fn take(&mut self, seq: u64) -> Result<u64, SeqRefusal> {
        if seq == 0 {
            return Err(SeqRefusal::TooOld);
        }
        if seq > self.highest {
            if self.highest == 0 {
                self.first = seq;
            }
            let mut missing = 0;
            if seq - self.highest >= Self::RING {
                // The whole window leaves: its seqs not taken, and those jumped over.
                let low = self.highest.saturating_sub(Self::WIDTH).max(self.first);
                missing += (low..=self.highest).filter(|&s| !self.is_taken(s)).count() as u64;
                let skipped_from = (self.highest + 1).max(self.first);
                missing += (seq - Self::WIDTH).saturating_sub(skipped_from);
                self.taken = Default::default();
            } else {
                // The slot of each seq the window moves over held the seq now leaving it.
                for s in self.highest + 1..=seq {
                    let (w, b) = Self::slot(s);
                    if s >= Self::RING && s - Self::RING >= self.first && self.taken[w] & b == 0 {
                        missing += 1;
                    }
                    self.taken[w] &= !b;
                }
            }
            let (w, b) = Self::slot(seq);
            self.taken[w] |= b;
            self.highest = seq;
            return Ok(missing);
        }
        if self.highest - seq > Self::WIDTH {
            return Err(SeqRefusal::TooOld);
        }
        let (w, b) = Self::slot(seq);
        if self.taken[w] & b != 0 {
            return Err(SeqRefusal::Duplicate);
        }
        self.taken[w] |= b;
        Ok(0)
    }

    /// A window that has taken every seq up to `high` (a reader's stored high, at start):
    /// those are refused as replays (or as too old), and counting missing seqs starts above.
    pub fn resume(high: u64) -> Self {
        if high == 0 {
            return Self::default();
        }
        Self {
            highest: high,
            first: high + 1,
            taken: [u64::MAX; 17],
        }
    }

    /// Whether `seq` was taken and is still inside the window.
    pub fn contains(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.highest && self.highest - seq <= Self::WIDTH && self.is_taken(seq)
    }

    /// Adds every seq `other` took to this window (the highest of the two leads).
    pub fn merge(&mut self, other: &SeqWindow) {
        let high = self.highest.max(other.highest);
        if high == 0 {
            return;
        }
        let mut taken = [0u64; 17];
        for seq in high.saturating_sub(Self::WIDTH).max(1)..=high {
            if self.contains(seq) || other.contains(seq) {
                let (w, b) = Self::slot(seq);
                taken[w] |= b;
            }
        }
        self.first = match (self.first, other.first) {
            (0, f) | (f, 0) => f,
            (a, b) => a.min(b),
        };
        self.highest = high;
        self.taken = taken;
    }

    /// The window as stored: its ring of taken bits, 17 little-endian u64 words (the ring is
    /// indexed by seq, so the highest seq, stored beside it, is all else it needs).
    pub fn to_stored(&self) -> Vec<u8> {
        self.taken.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The window stored as `highest` and [`Self::to_stored`]'s bits; with no bits (or
    /// bits of another shape), every seq up to `highest` counts as taken ([`Self::resume`]).
    /// Seqs missing below `highest` are not counted: this window did not see them go.
    pub fn from_stored(highest: u64, bits: Option<&[u8]>) -> Self {
        let Some(bits) = bits.filter(|b| b.len() == 17 * 8 && highest > 0) else {
            return Self::resume(highest);
        };
        let mut taken = [0u64; 17];
        for (w, chunk) in taken.iter_mut().zip(bits.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        Self {
            highest,
            first: highest + 1,
            taken,
        }
    }

    fn is_taken(&self, seq: u64) -> bool {
        let (w, b) = Self::slot(seq);
        self.taken[w] & b != 0
    }

    /// The highest seq taken.
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let mut b = TokenBucket::default();
        let t0 = 1_000_000;
        assert!((0..20).all(|_| b.take(t0, 10.0, 20.0)));
        assert!(!b.take(t0, 10.0, 20.0));
        // 100 ms later: one more token.
        assert!(b.take(t0 + 100, 10.0, 20.0));
        assert!(!b.take(t0 + 100, 10.0, 20.0));
        // A long pause refills only up to the burst.
        assert_eq!(
            (0..30)
                .filter(|_| b.take(t0 + 3_600_000, 10.0, 20.0))
                .count(),
            20
        );
    }

    #[test]
    fn seq_window_takes_each_seq_once_even_late() {
        let mut w = SeqWindow::default();
        assert_eq!(w.take(0), Err(SeqRefusal::TooOld));
        assert_eq!(w.take(10), Ok(0));
        assert_eq!(w.take(10), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(12), Ok(0));
        // 11 arrives late: taken once.
        assert_eq!(w.take(11), Ok(0));
        assert_eq!(w.take(11), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(10), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(9), Ok(0));
        // A jump keeps what is still inside the window.
        assert_eq!(w.take(12 + 100), Ok(0));
        assert_eq!(w.take(12), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(13), Ok(0));
        assert_eq!(w.take(112 - 100), Err(SeqRefusal::Duplicate));
        // One step at a time past a whole ring: old slots are reused, each seq taken once.
        let mut w = SeqWindow::default();
        for s in 1..=3 * SeqWindow::WIDTH {
            w.take(s).unwrap();
            if s > SeqWindow::WIDTH + 1 {
                assert_eq!(w.take(s - SeqWindow::WIDTH), Err(SeqRefusal::Duplicate));
                assert_eq!(w.take(s - SeqWindow::WIDTH - 1), Err(SeqRefusal::TooOld));
            }
        }
        // Exactly the width, then past it.
        let mut w = SeqWindow::default();
        w.take(1).unwrap();
        w.take(1 + SeqWindow::WIDTH).unwrap();
        assert_eq!(w.take(1), Err(SeqRefusal::Duplicate));
        w.take(2 + 2 * SeqWindow::WIDTH).unwrap();
        assert_eq!(w.take(1 + SeqWindow::WIDTH), Err(SeqRefusal::TooOld));
        assert_eq!(w.highest(), 2 + 2 * SeqWindow::WIDTH);
    }

    #[test]
    fn seq_window_counts_seqs_that_leave_it_never_taken() {
        let w_ = SeqWindow::WIDTH;
        // 1..=10 with 4 and 7 missing: nothing counted while they may still come late.
        let mut w = SeqWindow::default();
        let mut missing = 0;
        for s in (1..=10).filter(|s| ![4, 7].contains(s)) {
            missing += w.take(s).unwrap();
        }
        assert_eq!(missing, 0);
        // 7 comes late; 4 never does. Once the window moved past them, 4 alone is counted.
        assert_eq!(w.take(7), Ok(0));
        for s in 11..=w_ + 4 {
            missing += w.take(s).unwrap();
        }
        assert_eq!(missing, 0, "4 is still inside the window");
        missing += w.take(w_ + 5).unwrap(); // highest - 4 > WIDTH now
        assert_eq!(missing, 1);
        // Nothing more is counted as it goes on.
        for s in w_ + 6..=3 * w_ {
            missing += w.take(s).unwrap();
        }
        assert_eq!(missing, 1);
        // A jump past the whole window: the 99 seqs jumped over below the new window are
        // missing at once; the ones still inside it are not yet.
        let high = w.highest();
        missing += w.take(high + w_ + 100).unwrap();
        assert_eq!(missing, 1 + 99);
        // A jump also counts the old window's seqs that were never taken.
        let mut w = SeqWindow::default();
        w.take(5).unwrap();
        w.take(8).unwrap(); // 6 and 7 pending
        assert_eq!(w.take(8 + w_ + 1), Ok(2));
        // The first seq seen starts the count: a reader that starts at 1,000 owes nothing.
        let mut w = SeqWindow::default();
        assert_eq!(w.take(1_000), Ok(0));
        assert_eq!(w.take(1_000 + 2 * w_), Ok(2 * w_ - w_ - 1));
    }

    #[test]
    fn a_resumed_window_refuses_what_was_taken_before_the_restart() {
        let mut w = SeqWindow::resume(5_000);
        assert_eq!(w.take(5_000), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(4_500), Err(SeqRefusal::Duplicate));
        assert_eq!(w.take(1), Err(SeqRefusal::TooOld));
        // New seqs are taken, and a gap above the stored high is counted as usual.
        assert_eq!(w.take(5_001), Ok(0));
        assert_eq!(w.take(5_003), Ok(0));
        assert_eq!(w.take(5_003 + SeqWindow::WIDTH + 1), Ok(1));
        assert_eq!(SeqWindow::resume(0).highest(), 0);
    }

    #[test]
    fn a_stored_window_comes_back_with_its_gaps_and_merges_with_another() {
        // Node B took 1..=100 but 40 and 41 (in flight when it died).
        let mut b = SeqWindow::default();
        for s in (1..=100).filter(|s| ![40, 41].contains(s)) {
            b.take(s).unwrap();
        }
        let stored = SeqWindow::from_stored(b.highest(), Some(&b.to_stored()));
        assert!(stored.contains(39) && stored.contains(100));
        assert!(!stored.contains(40) && !stored.contains(41) && !stored.contains(101));
        // Node A takes the reader over: its own stale window (it had the reader up to 20)
        // merged with B's. What B processed is refused; what B never finished is taken.
        let mut a = SeqWindow::default();
        for s in 1..=20 {
            a.take(s).unwrap();
        }
        a.merge(&stored);
        assert_eq!(a.highest(), 100);
        assert_eq!(a.take(70), Err(SeqRefusal::Duplicate));
        assert_eq!(a.take(10), Err(SeqRefusal::Duplicate));
        assert_eq!(a.take(40), Ok(0));
        assert_eq!(a.take(41), Ok(0));
        assert_eq!(a.take(101), Ok(0));
        // Merging a window behind this one adds nothing it did not take.
        let before = a.to_stored();
        a.merge(&SeqWindow::from_stored(50, Some(&stored.to_stored())));
        assert_eq!(a.to_stored(), before);
        // No bits (a row stored before windows were): everything up to the highest is taken.
        let old = SeqWindow::from_stored(100, None);
        assert!(old.contains(40));
        assert!(SeqWindow::from_stored(100, Some(&[1, 2, 3])).contains(40));
    }

    #[test]
    fn a_finished_seq_is_stored_once_and_again_after_a_failed_write() {
        let admissions = Admissions::default();
        admissions.restore([StoredSeqs {
            reader_id: "rd-1".into(),
            highest: 5,
            window: None,
        }]);
        let a = admissions.by_reader.pin().get("rd-1").unwrap().clone();
        assert!(admissions.unpersisted().is_empty());
        lock(&a.seqs).take(6).unwrap();
        assert!(!a.is_finished(6));
        a.finished(6);
        assert!(a.is_finished(6));
        let changed = admissions.unpersisted();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].highest, 6);
        assert!(admissions.unpersisted().is_empty(), "stored once");
        admissions.unstored(&changed);
        assert_eq!(
            admissions.unpersisted().len(),
            1,
            "marked again after a failed write"
        );
    }
}
