//! Watch lists (布控, issue #17): police watch a plate or a tag without a theft report (a
//! bike used in a robbery, a suspect's bike). Each entry has a priority, a reason and case
//! number, an expiry, who added it, and may be covert (only command centers hear of its
//! hits). Entries live in `watch_entries`; the hot index flags every tag an active entry
//! names ([`crate::TagState::watched`]), by the tag or by its bike's plate, so ingest hands
//! their sightings to alerting, which reads the entries themselves
//! ([`Registry::active_watch_entries`]) and so never alerts on one that ended.
//!
//! Changes are audited and announced like a bike's ([`crate::changes::Change::Tag`] for each
//! tag concerned). An entry ends when removed or at its expiry ([`Registry::expire_watch_entries`],
//! run periodically by whoever composes the crates); its row stays, for the record.

use sqlx::Row;

use crate::auth::Caller;
use crate::changes::{Change, announce};
use crate::db::now_ms;
use crate::error::RegistryError;
use crate::hot_index::TagState;
use crate::store::{Registry, audit};
use crate::validate::{self, TagId};

/// Longest an entry may run.
pub const MAX_DURATION_MS: i64 = 366 * 24 * 3_600_000;
/// Entries listed at most.
pub const MAX_LIST: i64 = 5000;

/// One watch-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEntry {
    pub entry_id: String,
    /// The plate watched, or "" for a tag entry.
    pub plate: String,
    /// The tag watched, or "" for a plate entry.
    pub tag_id: String,
    /// 1 normal, 2 urgent, 3 critical.
    pub priority: u32,
    pub reason: String,
    pub case_number: String,
    pub covert: bool,
    pub expires_at_ms: i64,
    pub added_by: String,
    pub added_at_ms: i64,
    pub updated_at_ms: i64,
    /// Who ended it ("expired" at its expiry); None while active.
    pub removed_by: Option<String>,
    pub removed_at_ms: Option<i64>,
}

/// An entry to add. `entry_id` None: the server names it; given (an import's own id), a
/// second add with the same id changes that entry instead (idempotent imports).
#[derive(Debug, Clone, Default)]
pub struct NewWatchEntry {
    pub entry_id: Option<String>,
    pub plate: String,
    pub tag_id: String,
    pub priority: u32,
    pub reason: String,
    pub case_number: String,
    pub covert: bool,
    pub expires_at_ms: i64,
}

/// A change to an entry: None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WatchChange {
    pub priority: Option<u32>,
    pub reason: Option<String>,
    pub case_number: Option<String>,
    pub covert: Option<bool>,
    pub expires_at_ms: Option<i64>,
}

const COLUMNS: &str = "entry_id, plate, tag_id, priority, reason, case_number, covert, \
     expires_at_ms, added_by, added_at_ms, updated_at_ms, removed_by, removed_at_ms";

fn entry_of(row: &sqlx::any::AnyRow) -> Result<WatchEntry, sqlx::Error> {
    Ok(WatchEntry {
        entry_id: row.try_get("entry_id")?,
        plate: row.try_get("plate")?,
        tag_id: row.try_get("tag_id")?,
        priority: u32::try_from(row.try_get::<i64, _>("priority")?).unwrap_or(1),
        reason: row.try_get("reason")?,
        case_number: row.try_get("case_number")?,
        covert: row.try_get::<i64, _>("covert")? != 0,
        expires_at_ms: row.try_get("expires_at_ms")?,
        added_by: row.try_get("added_by")?,
        added_at_ms: row.try_get("added_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        removed_by: row.try_get("removed_by")?,
        removed_at_ms: row.try_get("removed_at_ms")?,
    })
}

fn priority(p: u32) -> Result<u32, RegistryError> {
    if (1..=3).contains(&p) {
        Ok(p)
    } else {
        Err(RegistryError::invalid(
            "priority",
            "must be 1 (normal), 2 (urgent) or 3 (critical)",
        ))
    }
}

fn expiry(at_ms: i64, now: i64) -> Result<i64, RegistryError> {
    if at_ms <= now {
        Err(RegistryError::invalid(
            "expires_at_ms",
            "must be in the future",
        ))
    } else if at_ms > now + MAX_DURATION_MS {
        Err(RegistryError::invalid(
            "expires_at_ms",
            "must be within 366 days",
        ))
    } else {
        Ok(at_ms)
    }
}

impl Registry {
    /// Adds an entry (or, with an `entry_id` that exists, changes it: see
    /// [`NewWatchEntry`]). Returns it and whether it was new.
    pub async fn add_watch_entry(
        &self,
        caller: &Caller,
        new: &NewWatchEntry,
    ) -> Result<(WatchEntry, bool), RegistryError> {
        let now = now_ms();
        let (plate, tag_id) = match (new.plate.trim(), new.tag_id.trim()) {
            (p, "") if !p.is_empty() => (validate::plate("plate", p)?, String::new()),
            ("", t) if !t.is_empty() => {
                (String::new(), TagId::parse_field("tag_id", t)?.to_string())
            }
            _ => {
                return Err(RegistryError::invalid(
                    "plate",
                    "give a plate or a tag_id (one of the two)",
                ));
            }
        };
        let priority = priority(new.priority)?;
        let reason = validate::text("reason", &new.reason, 200)?;
        let case_number = validate::optional_text("case_number", &new.case_number, 64)?;
        let expires = expiry(new.expires_at_ms, now)?;
        let entry_id = match &new.entry_id {
            Some(id) => validate::ident("entry_id", id)?,
            None => format!("wl-{}", hex::encode(rand::random::<[u8; 8]>())),
        };
        let mut tx = self.db.begin_write().await?;
        let before = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM watch_entries WHERE entry_id = $1"
        )))
        .bind(&entry_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| entry_of(&r))
        .transpose()?;
        let created = before.is_none();
        if let Some(old) = &before
            && (old.plate != plate || old.tag_id != tag_id)
        {
            return Err(RegistryError::FailedPrecondition(format!(
                "watch entry {entry_id} names another plate or tag"
            )));
        }
        sqlx::query(
            "INSERT INTO watch_entries (entry_id, plate, tag_id, priority, reason, case_number, \
                 covert, expires_at_ms, added_by, added_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (entry_id) DO UPDATE SET priority = excluded.priority, \
                 reason = excluded.reason, case_number = excluded.case_number, \
                 covert = excluded.covert, expires_at_ms = excluded.expires_at_ms, \
                 updated_at_ms = excluded.updated_at_ms, removed_by = NULL, removed_at_ms = NULL",
        )
        .bind(&entry_id)
        .bind(&plate)
        .bind(&tag_id)
        .bind(i64::from(priority))
        .bind(&reason)
        .bind(&case_number)
        .bind(i64::from(new.covert))
        .bind(expires)
        .bind(caller.audit_name())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let subject = format!(
            "{entry_id} {} priority {priority}{} case {case_number:?} until {expires}",
            if plate.is_empty() {
                format!("tag {tag_id}")
            } else {
                format!("plate {plate}")
            },
            if new.covert { " covert" } else { "" },
        );
        let action = if created {
            "add_watch_entry"
        } else {
            "change_watch_entry"
        };
        let tags = self
            .finish_watch_change(tx, caller, action, &subject, &plate, &tag_id)
            .await?;
        self.refresh_watched(&tags).await?;
        let entry = self.watch_entry(&entry_id).await?;
        Ok((entry, created))
    }

    /// Changes an active entry's priority, reason, case number, covertness or expiry.
    pub async fn update_watch_entry(
        &self,
        caller: &Caller,
        entry_id: &str,
        change: &WatchChange,
    ) -> Result<WatchEntry, RegistryError> {
        let now = now_ms();
        let current = self.watch_entry(entry_id).await?;
        if current.removed_at_ms.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "watch entry {entry_id} has ended"
            )));
        }
        let priority = change
            .priority
            .map(priority)
            .transpose()?
            .unwrap_or(current.priority);
        let reason = match &change.reason {
            Some(r) => validate::text("reason", r, 200)?,
            None => current.reason.clone(),
        };
        let case_number = match &change.case_number {
            Some(c) => validate::optional_text("case_number", c, 64)?,
            None => current.case_number.clone(),
        };
        let covert = change.covert.unwrap_or(current.covert);
        let expires = match change.expires_at_ms {
            Some(t) => expiry(t, now)?,
            None => current.expires_at_ms,
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE watch_entries SET priority = $1, reason = $2, case_number = $3, covert = $4, \
             expires_at_ms = $5, updated_at_ms = $6 WHERE entry_id = $7 AND removed_at_ms IS NULL",
        )
        .bind(i64::from(priority))
        .bind(&reason)
        .bind(&case_number)
        .bind(i64::from(covert))
        .bind(expires)
        .bind(now)
        .bind(entry_id)
        .execute(&mut *tx)
        .await?;
        let subject = format!(
            "{entry_id} priority {priority}{} case {case_number:?} until {expires}",
            if covert { " covert" } else { "" }
        );
        let tags = self
            .finish_watch_change(
                tx,
                caller,
                "change_watch_entry",
                &subject,
                &current.plate,
                &current.tag_id,
            )
            .await?;
        self.refresh_watched(&tags).await?;
        self.watch_entry(entry_id).await
    }

    /// Ends an active entry now.
    pub async fn remove_watch_entry(
        &self,
        caller: &Caller,
        entry_id: &str,
    ) -> Result<WatchEntry, RegistryError> {
        let current = self.watch_entry(entry_id).await?;
        if current.removed_at_ms.is_some() {
            return Err(RegistryError::FailedPrecondition(format!(
                "watch entry {entry_id} has ended"
            )));
        }
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE watch_entries SET removed_by = $1, removed_at_ms = $2, updated_at_ms = $2 \
             WHERE entry_id = $3 AND removed_at_ms IS NULL",
        )
        .bind(caller.audit_name())
        .bind(now_ms())
        .bind(entry_id)
        .execute(&mut *tx)
        .await?;
        let tags = self
            .finish_watch_change(
                tx,
                caller,
                "remove_watch_entry",
                entry_id,
                &current.plate,
                &current.tag_id,
            )
            .await?;
        self.refresh_watched(&tags).await?;
        self.watch_entry(entry_id).await
    }

    /// One entry, active or ended.
    pub async fn watch_entry(&self, entry_id: &str) -> Result<WatchEntry, RegistryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM watch_entries WHERE entry_id = $1"
        )))
        .bind(entry_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("watch entry {entry_id}")))?;
        Ok(entry_of(&row)?)
    }

    /// Entries, newest first, at most [`MAX_LIST`]: the active ones, or all (`ended`).
    /// Audited: the list names what the police watch.
    pub async fn list_watch_entries(
        &self,
        caller: &Caller,
        ended: bool,
    ) -> Result<Vec<WatchEntry>, RegistryError> {
        let now = now_ms();
        let rows = if ended {
            // What expired since the last sweep is shown ended, with who ended it: sweep
            // first (a write, for this rarer listing only).
            self.expire_watch_entries(now).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM watch_entries \
                 ORDER BY added_at_ms DESC, entry_id LIMIT $1"
            )))
            .bind(MAX_LIST)
            .fetch_all(self.db.pool())
            .await?
        } else {
            // The active ones: a read only (what expired since the last sweep is left out).
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM watch_entries \
                 WHERE removed_at_ms IS NULL AND expires_at_ms > $1 \
                 ORDER BY added_at_ms DESC, entry_id LIMIT $2"
            )))
            .bind(now)
            .bind(MAX_LIST)
            .fetch_all(self.db.pool())
            .await?
        };
        self.audit_lookup(
            caller,
            "list_watch_entries",
            if ended { "all" } else { "active" },
            true,
            "",
        )
        .await?;
        Ok(rows.iter().map(entry_of).collect::<Result<_, _>>()?)
    }

    /// The active, unexpired entries naming any of `plates` or `tags` (the alerting
    /// engine's read, once per batch).
    pub async fn active_watch_entries(
        &self,
        plates: &[String],
        tags: &[String],
        now: i64,
    ) -> Result<Vec<WatchEntry>, RegistryError> {
        if plates.is_empty() && tags.is_empty() {
            return Ok(Vec::new());
        }
        let b = self.db.backend();
        let keys: Vec<&String> = plates.iter().chain(tags).collect();
        let n = keys.len();
        let sql = format!(
            "SELECT {COLUMNS} FROM watch_entries WHERE removed_at_ms IS NULL \
             AND expires_at_ms > {} AND (plate IN {} OR tag_id IN {})",
            b.ph(1),
            b.placeholders(2, n),
            b.placeholders(2 + n, n),
        );
        // Each list bound in full: SQLite's placeholders are positional.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for k in keys.iter().chain(&keys) {
            q = q.bind(k.as_str());
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        Ok(rows.iter().map(entry_of).collect::<Result<_, _>>()?)
    }

    /// Ends every entry whose expiry has passed (`removed_by` "expired") and clears its
    /// tags' flags; returns how many ended.
    pub async fn expire_watch_entries(&self, now: i64) -> Result<usize, RegistryError> {
        let mut tx = self.db.begin_write().await?;
        let rows = sqlx::query(
            "SELECT entry_id, plate, tag_id FROM watch_entries \
             WHERE removed_at_ms IS NULL AND expires_at_ms <= $1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "UPDATE watch_entries SET removed_by = 'expired', removed_at_ms = expires_at_ms \
             WHERE removed_at_ms IS NULL AND expires_at_ms <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut tags = Vec::new();
        for row in &rows {
            let plate: String = row.try_get("plate")?;
            let tag: String = row.try_get("tag_id")?;
            for t in self.tags_named(&mut tx, &plate, &tag).await? {
                announce(&mut tx, &Change::Tag(t)).await?;
                tags.push(t);
            }
        }
        tx.commit().await?;
        self.refresh_watched(&tags).await?;
        Ok(rows.len())
    }

    /// The tags an entry names: the tag, or every tag of the bike with the plate.
    async fn tags_named(
        &self,
        conn: &mut sqlx::AnyConnection,
        plate: &str,
        tag: &str,
    ) -> Result<Vec<TagId>, RegistryError> {
        if !tag.is_empty() {
            return Ok(TagId::parse(tag).into_iter().collect());
        }
        let rows = sqlx::query(
            "SELECT g.tag_id FROM tags g JOIN bikes b ON b.bike_id = g.bike_id WHERE b.plate = $1",
        )
        .bind(plate)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("tag_id").ok())
            .filter_map(|t| TagId::parse(&t))
            .collect())
    }

    /// Audits, announces the tags concerned, commits; returns those tags.
    async fn finish_watch_change(
        &self,
        mut tx: crate::db::WriteTx,
        caller: &Caller,
        action: &str,
        subject: &str,
        plate: &str,
        tag: &str,
    ) -> Result<Vec<TagId>, RegistryError> {
        audit(&mut tx, caller, action, subject).await?;
        let tags = self.tags_named(&mut tx, plate, tag).await?;
        for t in &tags {
            announce(&mut tx, &Change::Tag(*t)).await?;
        }
        tx.commit().await?;
        Ok(tags)
    }

    /// Sets the watched flag of `tags` from the database (after a change here, or another
    /// node's announcement).
    pub(crate) async fn refresh_watched(&self, tags: &[TagId]) -> Result<(), RegistryError> {
        for tag in tags {
            self.reload_tag(*tag).await?;
        }
        Ok(())
    }

    /// Of these newly registered `(tag, plate)`s, the tags an active watch entry names (by
    /// the tag or the plate): a plate can be watched before its bike is registered.
    pub(crate) async fn watched_among(
        &self,
        bikes: &[(TagId, String)],
    ) -> Result<Vec<TagId>, RegistryError> {
        let mut out = Vec::new();
        let b = self.db.backend();
        for chunk in bikes.chunks(400) {
            let n = chunk.len();
            let sql = format!(
                "SELECT plate, tag_id FROM watch_entries WHERE removed_at_ms IS NULL \
                 AND (plate IN {} OR tag_id IN {})",
                b.placeholders(1, n),
                b.placeholders(1 + n, n),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (_, plate) in chunk {
                q = q.bind(plate.as_str());
            }
            for (tag, _) in chunk {
                q = q.bind(tag.to_string());
            }
            let rows = q.fetch_all(self.db.pool()).await?;
            if rows.is_empty() {
                continue;
            }
            let mut plates = std::collections::HashSet::new();
            let mut tags = std::collections::HashSet::new();
            for row in &rows {
                plates.insert(row.try_get::<String, _>("plate")?);
                tags.insert(row.try_get::<String, _>("tag_id")?);
            }
            out.extend(
                chunk
                    .iter()
                    .filter(|(t, p)| plates.contains(p) || tags.contains(&t.to_string()))
                    .map(|(t, _)| *t),
            );
        }
        Ok(out)
    }

    /// Reloads one tag's state: a registered tag with its bike; a tag no bike has, from its
    /// watch entries alone (watched or not).
    pub async fn reload_tag(&self, tag: TagId) -> Result<(), RegistryError> {
        let registered = sqlx::query("SELECT 1 AS yes FROM tags WHERE tag_id = $1")
            .bind(tag.to_string())
            .fetch_optional(self.db.pool())
            .await?
            .is_some();
        if registered {
            return self.index.load_bike_of(&self.db, tag).await;
        }
        let watched = sqlx::query(
            "SELECT 1 AS yes FROM watch_entries WHERE tag_id = $1 AND removed_at_ms IS NULL",
        )
        .bind(tag.to_string())
        .fetch_optional(self.db.pool())
        .await?
        .is_some();
        match self.index.lookup(tag) {
            Some(s) if s.canary() => {}
            Some(s) => self.index.set(tag, s.with_watched(watched)),
            None if watched => self.index.set(tag, TagState::new(0).with_watched(true)),
            None => {}
        }
        Ok(())
    }
}
