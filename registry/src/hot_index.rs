//! The hot index: tag -> (bike, stolen, armed, revoked), consulted by ingest for every read.
//!
//! Lookups are lock-free reads of a concurrent hash map (papaya), so the ingest path never
//! waits on a writer and never goes to the database. The registry updates an entry right
//! after the transaction that changed it commits, and the whole index is rebuilt from the
//! database at start.

use std::fmt;

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

    pub fn new(bike_id: i64) -> Self {
        Self { bike_id, flags: 0 }
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

/// The in-memory tag index. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct HotIndex {
    map: papaya::HashMap<u128, TagState>,
}

impl fmt::Debug for HotIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotIndex")
            .field("tags", &self.map.len())
            .finish()
    }
}

impl HotIndex {
    /// Rebuilds the index from the registry tables.
    pub async fn load(db: &Db) -> Result<Self, RegistryError> {
        let rows = sqlx::query(
            "SELECT g.tag_id, g.bike_id, g.state, b.armed, \
                    (SELECT COUNT(*) FROM theft_reports t \
                      WHERE t.bike_id = g.bike_id AND t.recovered_at_ms IS NULL) AS open_thefts \
             FROM tags g JOIN bikes b ON b.bike_id = g.bike_id",
        )
        .fetch_all(db.pool())
        .await?;
        let index = Self::default();
        {
            let map = index.map.pin();
            for row in rows {
                let tag: String = row.try_get("tag_id")?;
                let Some(tag) = TagId::parse(&tag) else {
                    tracing::warn!(tag = %tag, "Skipped a bike with a malformed tag id.");
                    continue;
                };
                let open: i64 = row.try_get("open_thefts")?;
                let revoked = row.try_get::<String, _>("state")? == "revoked";
                let armed = !revoked && row.try_get::<i64, _>("armed")? != 0;
                let state = TagState::new(row.try_get("bike_id")?)
                    .with_stolen(open > 0)
                    .with_armed(armed)
                    .with_revoked(revoked);
                map.insert(tag.as_u128(), state);
            }
        }
        Ok(index)
    }

    /// The state of a tag, if it is registered.
    #[inline]
    pub fn lookup(&self, tag: TagId) -> Option<TagState> {
        self.map.pin().get(&tag.as_u128()).copied()
    }

    /// Sets a tag's state (after a commit).
    pub fn set(&self, tag: TagId, state: TagState) {
        self.map.pin().insert(tag.as_u128(), state);
    }

    /// Changes a registered tag's state in place (after a commit).
    pub fn update(&self, tag: TagId, f: impl Fn(TagState) -> TagState) {
        self.map.pin().update(tag.as_u128(), |s| f(*s));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
