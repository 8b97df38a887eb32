//! Stage 4, smooth: a reader sees a passing tag many times; its reads are folded into one
//! pass per (reader, tag), ALE-style. A pass opens on the first read (the alert rules run
//! then, at once), grows with every read no more than `gap` after the previous one (reader
//! clock), and closes when a later read comes after a longer gap, or when the reader has
//! not read the tag for `gap` by the server clock (the periodic [`Smoother::sweep`]).
//! Closed passes go to the pass history.
//!
//! One smoother per pipeline worker; a reader's messages always reach the same worker, so
//! its passes live in exactly one smoother. Only registered tags (found in the hot index)
//! are smoothed, so the map's keys are not chosen by whoever sends readings; its size is
//! still capped, and reaching the cap closes every open pass early (counted), which costs
//! precision, never memory.

use std::collections::HashMap;
use std::sync::Arc;

use greenplate_alerting::Pass;
use greenplate_registry::validate::TagBuildHasher;
use greenplate_registry::{Reader, TagId};

use super::decode::Read;

/// How reads become passes.
#[derive(Debug, Clone, Copy)]
pub struct SmoothConfig {
    /// A read more than this after the previous read of the tag by the same reader starts a
    /// new pass, and an open pass this long without a read closes, milliseconds.
    pub gap_ms: i64,
    /// Most passes open at once in one smoother.
    pub max_open: usize,
}

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// The first read of a pass: run the rules.
    Opened,
    /// A later read of an open pass.
    Extended,
}

#[derive(Debug)]
struct Open {
    reader: Arc<Reader>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    reads: u32,
    peak_rssi_dbm: i32,
    /// Server clock at the last read, for closing idle passes whatever the reader's clock.
    touched_ms: i64,
}

impl Open {
    fn close(self, tag: TagId) -> Pass {
        Pass {
            tag,
            reader_id: self.reader.id.as_str().into(),
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            reads: self.reads,
            peak_rssi_dbm: self.peak_rssi_dbm,
        }
    }
}

/// The open passes of one worker.
#[derive(Debug)]
pub struct Smoother {
    config: SmoothConfig,
    /// Tag -> its open passes, one per reader that is reading it (usually one).
    open: HashMap<TagId, Vec<Open>, TagBuildHasher>,
    len: usize,
    /// Times the cap was reached and every pass closed early.
    pub evictions: u64,
}

impl Smoother {
    pub fn new(config: SmoothConfig) -> Self {
        Self {
            config,
            open: HashMap::default(),
            len: 0,
            evictions: 0,
        }
    }

    /// Open passes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Folds one read by `reader` at server time `now_ms`; a pass it closes is pushed to
    /// `closed`.
    pub fn observe(
        &mut self,
        reader: &Arc<Reader>,
        read: &Read,
        now_ms: i64,
        closed: &mut Vec<Pass>,
    ) -> Folded {
        let gap = self.config.gap_ms;
        if let Some(passes) = self.open.get_mut(&read.tag)
            && let Some(i) = passes.iter().position(|p| Arc::ptr_eq(&p.reader, reader))
        {
            let p = &mut passes[i];
            if read.last_seen_ms.saturating_add(gap) < p.first_seen_ms {
                // An earlier pass that arrives late (a broker's redelivery, or a node
                // draining a dead peer's session): a pass of its own, closed at once, and
                // the open one goes on.
                closed.push(Self::start(reader, read, now_ms).close(read.tag));
                return Folded::Opened;
            }
            if read.first_seen_ms <= p.last_seen_ms.saturating_add(gap) {
                p.first_seen_ms = p.first_seen_ms.min(read.first_seen_ms);
                p.last_seen_ms = p.last_seen_ms.max(read.last_seen_ms);
                p.reads = p.reads.saturating_add(read.reads);
                p.peak_rssi_dbm = p.peak_rssi_dbm.max(read.peak_rssi_dbm);
                p.touched_ms = now_ms;
                return Folded::Extended;
            }
            // Seen again after a gap: the old pass is over, this read opens a new one.
            let old = std::mem::replace(p, Self::start(reader, read, now_ms));
            closed.push(old.close(read.tag));
            return Folded::Opened;
        }
        if self.len >= self.config.max_open {
            self.evictions += 1;
            tracing::warn!(
                open = self.len,
                "Too many open passes; closing them all early (raise ingest.max_open_passes?)."
            );
            self.flush(closed);
        }
        self.open
            .entry(read.tag)
            .or_default()
            .push(Self::start(reader, read, now_ms));
        self.len += 1;
        Folded::Opened
    }

    fn start(reader: &Arc<Reader>, read: &Read, now_ms: i64) -> Open {
        Open {
            reader: reader.clone(),
            first_seen_ms: read.first_seen_ms,
            last_seen_ms: read.last_seen_ms,
            reads: read.reads,
            peak_rssi_dbm: read.peak_rssi_dbm,
            touched_ms: now_ms,
        }
    }

    /// Closes every pass not read for `gap` by the server clock at `now_ms`.
    pub fn sweep(&mut self, now_ms: i64, closed: &mut Vec<Pass>) {
        let cutoff = now_ms.saturating_sub(self.config.gap_ms);
        let mut len = self.len;
        self.open.retain(|tag, passes| {
            let mut i = 0;
            while i < passes.len() {
                if passes[i].touched_ms < cutoff {
                    closed.push(passes.swap_remove(i).close(*tag));
                    len -= 1;
                } else {
                    i += 1;
                }
            }
            !passes.is_empty()
        });
        self.len = len;
        if self.open.capacity() > 4 * self.open.len().max(1024) {
            self.open.shrink_to_fit();
        }
    }

    /// Closes every open pass (at shutdown, or when the cap is reached).
    pub fn flush(&mut self, closed: &mut Vec<Pass>) {
        for (tag, passes) in self.open.drain() {
            closed.extend(passes.into_iter().map(|p| p.close(tag)));
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: i64 = 2_000;

    fn reader(id: &str) -> Arc<Reader> {
        Arc::new(Reader::new(id.into(), id.into(), 23.3, 116.6, "secret"))
    }

    fn read(tag: u128, at: i64, rssi: i32) -> Read {
        Read {
            tag: TagId::parse(&format!("{tag:024X}")).unwrap(),
            first_seen_ms: at,
            last_seen_ms: at,
            reads: 1,
            peak_rssi_dbm: rssi,
        }
    }

    fn smoother(max_open: usize) -> Smoother {
        Smoother::new(SmoothConfig {
            gap_ms: GAP,
            max_open,
        })
    }

    #[test]
    fn reads_within_the_gap_are_one_pass() {
        let (r, mut s, mut closed) = (reader("r1"), smoother(100), Vec::new());
        assert_eq!(
            s.observe(&r, &read(1, 1_000, -70), 1_000, &mut closed),
            Folded::Opened
        );
        assert_eq!(
            s.observe(&r, &read(1, 2_500, -50), 2_500, &mut closed),
            Folded::Extended
        );
        assert_eq!(
            s.observe(&r, &read(1, 4_000, -60), 4_000, &mut closed),
            Folded::Extended
        );
        assert!(closed.is_empty());
        // Not idle for the gap yet by the server clock.
        s.sweep(5_000, &mut closed);
        assert!(closed.is_empty());
        s.sweep(6_001, &mut closed);
        assert_eq!(
            closed,
            vec![Pass {
                tag: read(1, 0, 0).tag,
                reader_id: "r1".into(),
                first_seen_ms: 1_000,
                last_seen_ms: 4_000,
                reads: 3,
                peak_rssi_dbm: -50,
            }]
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_read_after_the_gap_closes_the_pass_and_opens_another() {
        let (r, mut s, mut closed) = (reader("r1"), smoother(100), Vec::new());
        s.observe(&r, &read(1, 1_000, -70), 1_000, &mut closed);
        assert_eq!(
            s.observe(&r, &read(1, 3_001, -70), 3_001, &mut closed),
            Folded::Opened
        );
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].first_seen_ms, closed[0].last_seen_ms),
            (1_000, 1_000)
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn an_earlier_pass_arriving_late_is_its_own_pass() {
        // GAP is 2 s (smoother(..)): a read 5 s older than the open pass came late.
        let (r, mut s, mut closed) = (reader("r1"), smoother(100), Vec::new());
        s.observe(&r, &read(1, 10_000, -70), 10_000, &mut closed);
        assert_eq!(
            s.observe(&r, &read(1, 5_000, -60), 10_100, &mut closed),
            Folded::Opened
        );
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].first_seen_ms, closed[0].peak_rssi_dbm),
            (5_000, -60)
        );
        // The open pass is untouched; a read just before it (within the gap) joins it.
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.observe(&r, &read(1, 9_000, -70), 10_200, &mut closed),
            Folded::Extended
        );
        assert_eq!(closed.len(), 1);
    }

    #[test]
    fn two_readers_of_one_tag_keep_separate_passes() {
        let (a, b, mut s, mut closed) = (reader("a"), reader("b"), smoother(100), Vec::new());
        assert_eq!(
            s.observe(&a, &read(7, 1_000, -70), 1_000, &mut closed),
            Folded::Opened
        );
        assert_eq!(
            s.observe(&b, &read(7, 1_100, -70), 1_100, &mut closed),
            Folded::Opened
        );
        assert_eq!(
            s.observe(&a, &read(7, 1_200, -70), 1_200, &mut closed),
            Folded::Extended
        );
        assert_eq!(s.len(), 2);
        s.flush(&mut closed);
        assert_eq!(closed.len(), 2);
        assert!(s.is_empty());
    }

    #[test]
    fn reaching_the_cap_closes_early_and_counts() {
        let (r, mut s, mut closed) = (reader("r1"), smoother(2), Vec::new());
        s.observe(&r, &read(1, 1_000, -70), 1_000, &mut closed);
        s.observe(&r, &read(2, 1_000, -70), 1_000, &mut closed);
        assert!(closed.is_empty());
        assert_eq!(
            s.observe(&r, &read(3, 1_000, -70), 1_000, &mut closed),
            Folded::Opened
        );
        assert_eq!((closed.len(), s.len(), s.evictions), (2, 1, 1));
    }

    #[test]
    fn idle_is_judged_by_the_server_clock_not_the_readers() {
        // A reader whose clock is an hour behind still has its passes closed on time.
        let (r, mut s, mut closed) = (reader("r1"), smoother(100), Vec::new());
        s.observe(&r, &read(1, 1_000, -70), 3_601_000, &mut closed);
        s.sweep(3_602_000, &mut closed);
        assert!(closed.is_empty());
        s.sweep(3_603_001, &mut closed);
        assert_eq!(closed.len(), 1);
    }
}
