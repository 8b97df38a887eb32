//! The hot index: tag -> (bike, stolen, armed, revoked), consulted by ingest for every read.
//!
//! A flat open-addressing table (linear probing) of 24-byte slots, each three atomics:
//! `hi` = occupied bit | flags | the tag's top 32 bits, `lo` = the tag's low 64 bits,
//! `bike` = the bike id. A lookup is one hash and, usually, one cache line: no lock, no
//! allocation, no database. Tags are never removed (a revoked tag keeps its entry, flagged),
//! so a slot's key never changes once published, which is what makes lock-free reads safe:
//! a writer fills `bike` and `lo`, then publishes `hi` with Release; a reader loads `hi` with
//! Acquire and only then looks at the rest. Flag changes are one atomic store to `hi`.
//!
//! Writers (kiosk operations, after their commit) are serialised by a mutex; they never
//! make a reader wait. When the table passes 75% full a writer builds one twice the size and
//! publishes it with `ArcSwap`; readers still holding the old table see the state from just
//! before, as if they had looked a moment earlier. Memory: 24 bytes per slot at 37.5-75%
//! load, so 32-64 bytes per tag (measured in `benches/`).

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures::TryStreamExt;
use sqlx::Row;

use crate::db::Db;
use crate::error::RegistryError;
use crate::validate::TagId;

/// What ingest needs to know about a tag, packed small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagState {
    pub bike_id: i64,
    flags: u8,
}

impl TagState {
    const STOLEN: u8 = 1;
    const ARMED: u8 = 2;
    const REVOKED: u8 = 4;
    const CANARY: u8 = 8;
    const WATCHED: u8 = 16;

    pub fn new(bike_id: i64) -> Self {
        Self { bike_id, flags: 0 }
    }

    /// A canary tag's state: no bike, the canary flag (alerting's canaries).
    pub fn canary_tag() -> Self {
        Self::new(0).with(Self::CANARY, true)
    }

    /// A canary tag: its sightings go to alerting as canary sightings, not as passes.
    pub fn canary(self) -> bool {
        self.flags & Self::CANARY != 0
    }

    pub fn stolen(self) -> bool {
        self.flags & Self::STOLEN != 0
    }

    pub fn armed(self) -> bool {
        self.flags & Self::ARMED != 0
    }

    pub fn revoked(self) -> bool {
        self.flags & Self::REVOKED != 0
    }

    /// On a police watch list (by its plate or by the tag): its sightings go to alerting,
    /// which checks the entries (and their expiry) itself.
    pub fn watched(self) -> bool {
        self.flags & Self::WATCHED != 0
    }

    pub fn with_watched(self, on: bool) -> Self {
        self.with(Self::WATCHED, on)
    }

    pub fn with_stolen(self, on: bool) -> Self {
        self.with(Self::STOLEN, on)
    }

    pub fn with_armed(self, on: bool) -> Self {
        self.with(Self::ARMED, on)
    }

    pub fn with_revoked(self, on: bool) -> Self {
        self.with(Self::REVOKED, on)
    }

    fn with(mut self, bit: u8, on: bool) -> Self {
        if on {
            self.flags |= bit
        } else {
            self.flags &= !bit
        }
        self
    }
}

const OCCUPIED: u64 = 1 << 63;
const FLAGS_SHIFT: u32 = 32;
const KEY_HI_MASK: u64 = 0xFFFF_FFFF;
const MIN_BITS: u32 = 10;

/// One slot; see the module docs for the protocol.
#[derive(Default)]
struct Slot {
    hi: AtomicU64,
    lo: AtomicU64,
    bike: AtomicI64,
}

struct Table {
    slots: Box<[Slot]>,
    /// log2 of the slot count.
    bits: u32,
}

impl Table {
    fn new(bits: u32) -> Self {
        Self {
            slots: (0..1usize << bits).map(|_| Slot::default()).collect(),
            bits,
        }
    }

    #[inline]
    fn start(&self, key: u128) -> usize {
        // Fibonacci hashing of a mix of both halves: sequential tag serials spread evenly.
        let mixed = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
        (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: u128) -> (usize, bool) {
        let (want_hi, want_lo) = (((key >> 64) as u64) & KEY_HI_MASK, key as u64);
        let mask = self.slots.len() - 1;
        let mut i = self.start(key);
        loop {
            let slot = &self.slots[i];
            let hi = slot.hi.load(Ordering::Acquire);
            if hi & OCCUPIED == 0 {
                return (i, false);
            }
            if hi & KEY_HI_MASK == want_hi && slot.lo.load(Ordering::Relaxed) == want_lo {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }
}

fn pack_hi(key: u128, state: TagState) -> u64 {
    OCCUPIED | (u64::from(state.flags) << FLAGS_SHIFT) | (((key >> 64) as u64) & KEY_HI_MASK)
}

/// The in-memory tag index. Cheap to share behind an `Arc`.
pub struct HotIndex {
    table: ArcSwap<Table>,
    len: AtomicUsize,
    writer: Mutex<()>,
    /// Bumped by every change made in memory after a commit ([`HotIndex::set`],
    /// [`HotIndex::update`]). A reload of one bike whose database read began before such a
    /// change may miss it ([`HotIndex::load_bike_of`]).
    epoch: AtomicU64,
}

/// How often [`HotIndex::load_bike_of`] reads again when the index changed meanwhile.
const RELOAD_TRIES: usize = 4;

impl Default for HotIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl fmt::Debug for HotIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotIndex")
            .field("tags", &self.len())
            .field("slots", &self.table.load().slots.len())
            .finish()
    }
}

impl HotIndex {
    /// An empty index sized for `tags` without growing.
    pub fn with_capacity(tags: usize) -> Self {
        let bits = (tags.saturating_mul(4) / 3 + 1)
            .next_power_of_two()
            .trailing_zeros()
            .max(MIN_BITS);
        Self {
            table: ArcSwap::from_pointee(Table::new(bits)),
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Rebuilds the index from the registry tables.
    pub async fn load(db: &Db) -> Result<Self, RegistryError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tags")
            .fetch_one(db.pool())
            .await?;
        let index = Self::with_capacity(usize::try_from(count).unwrap_or(0));
        index.load_into(db).await?;
        Ok(index)
    }

    /// Sets every tag's state from the registry tables (at start, and when another node
    /// made changes this one may have missed).
    pub async fn load_into(&self, db: &Db) -> Result<(), RegistryError> {
        // Streamed, so the rows of a district never sit in memory all at once.
        let mut rows = sqlx::query(TAG_STATES).fetch(db.pool());
        while let Some(row) = rows.try_next().await? {
            if let Some((tag, state)) = tag_state_of(&row)? {
                self.set(tag, state);
            }
        }
        // Tags no bike has that a watch list names (registry::watch).
        let rows = sqlx::query(
            "SELECT DISTINCT w.tag_id FROM watch_entries w WHERE w.removed_at_ms IS NULL \
             AND w.tag_id <> '' AND NOT EXISTS (SELECT 1 FROM tags g WHERE g.tag_id = w.tag_id)",
        )
        .fetch_all(db.pool())
        .await?;
        for row in rows {
            if let Some(tag) = TagId::parse(&row.try_get::<String, _>("tag_id")?) {
                self.set(tag, TagState::new(0).with_watched(true));
            }
        }
        Ok(())
    }

    /// Sets the states of every tag of the bike that has (or had) `tag` (a node announced a
    /// change to it).
    ///
    /// A read that began before this node changed the index in memory is not installed: it
    /// could undo that change (a theft reported here right after the bike was registered,
    /// briefly not flagged). It reads again instead; if changes keep coming, the last read
    /// is left out, since each change was announced in its own transaction and the reload
    /// its announcement brings reads everything committed before it.
    pub async fn load_bike_of(&self, db: &Db, tag: TagId) -> Result<(), RegistryError> {
        for _ in 0..RELOAD_TRIES {
            let epoch = self.epoch.load(Ordering::Acquire);
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{TAG_STATES} WHERE g.bike_id = (SELECT bike_id FROM tags WHERE tag_id = $1)"
            )))
            .bind(tag.to_string())
            .fetch_all(db.pool())
            .await?;
            let mut states = Vec::with_capacity(rows.len());
            for row in &rows {
                if let Some(s) = tag_state_of(row)? {
                    states.push(s);
                }
            }
            if self.install_unless_changed(&states, epoch) {
                break;
            }
        }
        Ok(())
    }

    /// Sets `states` read from the database, unless the index was changed in memory since
    /// `epoch` was taken. Returns whether it set them.
    fn install_unless_changed(&self, states: &[(TagId, TagState)], epoch: u64) -> bool {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        for (tag, state) in states {
            self.set_locked(tag.as_u128(), *state);
        }
        true
    }

    /// The state of a tag, if it was ever registered.
    #[inline]
    pub fn lookup(&self, tag: TagId) -> Option<TagState> {
        let key = tag.as_u128();
        let table = self.table.load();
        let (i, found) = table.find(key);
        if !found {
            return None;
        }
        let slot = &table.slots[i];
        let hi = slot.hi.load(Ordering::Acquire);
        Some(TagState {
            bike_id: slot.bike.load(Ordering::Relaxed),
            flags: (hi >> FLAGS_SHIFT) as u8,
        })
    }

    /// Sets a tag's state (after a commit).
    pub fn set(&self, tag: TagId, state: TagState) {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.set_locked(tag.as_u128(), state);
    }

    /// Changes a registered tag's state in place (after a commit); no-op for unknown tags.
    pub fn update(&self, tag: TagId, f: impl Fn(TagState) -> TagState) {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(current) = self.lookup(tag) {
            self.set_locked(tag.as_u128(), f(current));
        }
    }

    fn set_locked(&self, key: u128, state: TagState) {
        let mut table = self.table.load_full();
        let (mut i, found) = table.find(key);
        if !found && (self.len.load(Ordering::Relaxed) + 1) * 4 > table.slots.len() * 3 {
            table = Arc::new(self.grown(&table));
            self.table.store(table.clone());
            i = table.find(key).0;
        }
        let slot = &table.slots[i];
        slot.bike.store(state.bike_id, Ordering::Relaxed);
        slot.lo.store(key as u64, Ordering::Relaxed);
        slot.hi.store(pack_hi(key, state), Ordering::Release);
        if !found {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy of `old` with twice the slots (writer lock held).
    fn grown(&self, old: &Table) -> Table {
        let new = Table::new(old.bits + 1);
        for slot in old.slots.iter() {
            let hi = slot.hi.load(Ordering::Acquire);
            if hi & OCCUPIED == 0 {
                continue;
            }
            let lo = slot.lo.load(Ordering::Relaxed);
            let key = (u128::from(hi & KEY_HI_MASK) << 64) | u128::from(lo);
            let (i, _) = new.find(key);
            let dst = &new.slots[i];
            dst.bike
                .store(slot.bike.load(Ordering::Relaxed), Ordering::Relaxed);
            dst.lo.store(lo, Ordering::Relaxed);
            dst.hi.store(hi, Ordering::Release);
        }
        new
    }

    /// Tags in the index (including revoked ones).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the table.
    pub fn memory_bytes(&self) -> usize {
        self.table.load().slots.len() * std::mem::size_of::<Slot>()
    }
}

/// Every tag with what the hot index keeps of it.
const TAG_STATES: &str = "SELECT g.tag_id, g.bike_id, g.state, b.armed, \
        (SELECT COUNT(*) FROM theft_reports t \
          WHERE t.bike_id = g.bike_id AND t.recovered_at_ms IS NULL) AS open_thefts, \
        (SELECT COUNT(*) FROM watch_entries w WHERE w.removed_at_ms IS NULL \
          AND (w.tag_id = g.tag_id OR w.plate = b.plate)) AS watches \
     FROM tags g JOIN bikes b ON b.bike_id = g.bike_id";

/// A row of [`TAG_STATES`] as an index entry; `None` (logged) for a malformed tag id.
fn tag_state_of(row: &sqlx::any::AnyRow) -> Result<Option<(TagId, TagState)>, RegistryError> {
    let tag: String = row.try_get("tag_id")?;
    let Some(tag) = TagId::parse(&tag) else {
        tracing::warn!(tag = %tag, "Skipped a malformed tag id.");
        return Ok(None);
    };
    let revoked = row.try_get::<String, _>("state")? == "revoked";
    let state = TagState::new(row.try_get("bike_id")?)
        .with_stolen(row.try_get::<i64, _>("open_thefts")? > 0)
        .with_armed(!revoked && row.try_get::<i64, _>("armed")? != 0)
        .with_revoked(revoked)
        .with_watched(row.try_get::<i64, _>("watches")? > 0);
    Ok(Some((tag, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bike's reload read before a theft was reported here must not clear the flag; one
    /// read with nothing changed meanwhile is set.
    #[test]
    fn a_reload_older_than_a_local_change_is_not_installed() {
        let idx = HotIndex::default();
        let tag = TagId::parse("E2801160600002070000ABCD").unwrap();
        idx.set(tag, TagState::new(5));
        let epoch = idx.epoch.load(Ordering::Acquire);
        let read_before = [(tag, TagState::new(5))];
        idx.update(tag, |s| s.with_stolen(true));
        assert!(!idx.install_unless_changed(&read_before, epoch));
        assert!(idx.lookup(tag).unwrap().stolen());

        let epoch = idx.epoch.load(Ordering::Acquire);
        let read_after = [(tag, TagState::new(5).with_armed(true))];
        assert!(idx.install_unless_changed(&read_after, epoch));
        assert!(idx.lookup(tag).unwrap().armed());
    }

    #[test]
    fn flags_and_updates() {
        let idx = HotIndex::default();
        let tag = TagId::parse("E2801160600002070000ABCD").unwrap();
        assert_eq!(idx.lookup(tag), None);
        idx.set(tag, TagState::new(5));
        idx.update(tag, |s| s.with_stolen(true));
        let s = idx.lookup(tag).unwrap();
        assert!(s.stolen() && !s.armed() && !s.revoked());
        assert_eq!(s.bike_id, 5);
        idx.update(tag, |s| s.with_stolen(false).with_armed(true));
        let s = idx.lookup(tag).unwrap();
        assert!(!s.stolen() && s.armed());
        let other = TagId::parse("E2801160600002070000ABCE").unwrap();
        idx.update(other, |s| s.with_stolen(true));
        assert_eq!(idx.lookup(other), None);
    }

    fn tag(i: u64) -> TagId {
        TagId::parse(&format!("E2801160{i:016X}")).unwrap()
    }

    #[test]
    fn grows_and_keeps_everything() {
        let idx = HotIndex::default();
        for i in 0..50_000u64 {
            idx.set(tag(i), TagState::new(i as i64).with_armed(i % 3 == 0));
        }
        assert_eq!(idx.len(), 50_000);
        for i in 0..50_000u64 {
            let s = idx.lookup(tag(i)).unwrap();
            assert_eq!((s.bike_id, s.armed()), (i as i64, i % 3 == 0));
        }
        assert_eq!(idx.lookup(tag(50_000)), None);
        // Same tag, same slot: len does not change.
        idx.set(tag(7), TagState::new(7).with_revoked(true));
        assert_eq!(idx.len(), 50_000);
        assert!(idx.lookup(tag(7)).unwrap().revoked());
        let per_tag = idx.memory_bytes() as f64 / idx.len() as f64;
        assert!(per_tag <= 64.0, "{per_tag} bytes per tag");
    }

    /// Readers on other threads never see a torn entry while a writer inserts, grows the
    /// table and changes flags in place, and they did read while it wrote: they start
    /// together, the writer lets each reader finish a whole pass after each chunk of its
    /// work, and each reader must have seen every chunk's state (old and new values).
    #[test]
    fn concurrent_readers_see_whole_entries() {
        const TAGS: u64 = 20_000;
        const CHUNK: u64 = 1_000;
        const STEP: usize = 97;
        const READERS: usize = 2;
        let idx = Arc::new(HotIndex::default());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let passes: Arc<[AtomicU64; READERS]> = Arc::new(Default::default());
        let start = Arc::new(std::sync::Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|me| {
                let (idx, done, passes, start) =
                    (idx.clone(), done.clone(), passes.clone(), start.clone());
                std::thread::spawn(move || {
                    // How many sampled tags each pass found, and which flag values it saw.
                    let mut counts = std::collections::BTreeSet::new();
                    let (mut plain, mut stolen) = (false, false);
                    start.wait();
                    while !done.load(Ordering::Relaxed) {
                        let mut present = 0;
                        for i in (0..TAGS).step_by(STEP) {
                            if let Some(s) = idx.lookup(tag(i)) {
                                assert_eq!(s.bike_id, i as i64 + 1, "torn entry for tag {i}");
                                present += 1;
                                plain |= !s.stolen();
                                stolen |= s.stolen();
                            }
                        }
                        counts.insert(present);
                        passes[me].fetch_add(1, Ordering::Release);
                    }
                    (counts, plain, stolen)
                })
            })
            .collect();
        // Waits until every reader has made a whole pass since now (or one has stopped:
        // its panic is reported at the join).
        let caught_up = || {
            let target: Vec<u64> = passes
                .iter()
                .map(|p| p.load(Ordering::Acquire) + 2)
                .collect();
            while passes
                .iter()
                .zip(&target)
                .any(|(p, t)| p.load(Ordering::Acquire) < *t)
                && !readers.iter().any(|r| r.is_finished())
            {
                std::thread::yield_now();
            }
        };
        start.wait();
        for chunk in 0..TAGS / CHUNK {
            for i in chunk * CHUNK..(chunk + 1) * CHUNK {
                idx.set(tag(i), TagState::new(i as i64 + 1));
            }
            caught_up();
        }
        // Flags change in place: every sampled tag reported stolen.
        for i in (0..TAGS).step_by(STEP) {
            idx.update(tag(i), |s| s.with_stolen(true));
        }
        caught_up();
        done.store(true, Ordering::Relaxed);
        let sampled = (0..TAGS).step_by(STEP).count();
        for r in readers {
            let (counts, plain, stolen) = r.join().unwrap();
            // One state per chunk at least (each chunk adds sampled tags), the last full.
            assert!(
                counts.len() >= (TAGS / CHUNK) as usize,
                "a reader saw only {counts:?} of the writer's {} chunks",
                TAGS / CHUNK
            );
            assert_eq!(counts.last(), Some(&sampled));
            assert!(
                plain && stolen,
                "a reader must see the flag's old and new values: not stolen {plain}, stolen {stolen}"
            );
        }
        assert_eq!(idx.len(), TAGS as usize);
    }
}
