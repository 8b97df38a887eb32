//! Investigations over the pass history (issue #17), for command centers: a stakeout (which
//! tags passed some readers in a window) and a companion search (伴随: which tags passed the
//! same readers as a bike within a short time of it, on several readers). Each needs a
//! reason that goes into the audit log with the call, and each is bounded: a window of at
//! most [`MAX_WINDOW_MS`], at most [`MAX_STAKEOUT`] passes or [`MAX_COMPANIONS`] companions.
//! Both read `passes` through `passes_reader_time (reader_id, first_seen_ms)` and, for a
//! subject's own passes, `passes_once (tag_id, first_seen_ms, ...)`: indexed on both
//! backends.

use std::collections::HashMap;

use geo::{Contains, Point};
use greenplate_registry::{BikeKey, Caller, RegistryError};
use sqlx::Row;

use crate::error::AlertingError;
use crate::state::Alerting;

/// Longest window an investigation may search.
pub const MAX_WINDOW_MS: i64 = 7 * 24 * 3_600_000;
/// Most passes a stakeout returns.
pub const MAX_STAKEOUT: usize = 10_000;
/// Most companions a search returns.
pub const MAX_COMPANIONS: usize = 100;
/// A subject's passes searched at most (the newest).
pub const MAX_SUBJECT_PASSES: usize = 1_000;
/// Longest `delta_ms` of a companion search.
pub const MAX_DELTA_MS: i64 = 600_000;
/// Readers a stakeout may name at most.
const MAX_READERS: usize = 500;

/// Where a stakeout looks.
#[derive(Debug, Clone)]
pub enum Watched {
    Readers(Vec<String>),
    /// Every reader inside this GeoJSON Polygon or MultiPolygon.
    Polygon(String),
}

/// One pass a stakeout found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StakeoutPass {
    pub tag_id: String,
    /// Empty for a tag no bike has.
    pub plate: String,
    pub reader_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub reads: u32,
}

/// What a stakeout found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stakeout {
    pub passes: Vec<StakeoutPass>,
    pub reader_ids: Vec<String>,
    pub truncated: bool,
}

/// A companion search's parameters.
#[derive(Debug, Clone)]
pub struct CompanionQuery {
    pub subject: BikeKey,
    pub from_ms: i64,
    pub to_ms: i64,
    pub delta_ms: i64,
    pub min_readers: u32,
    pub limit: usize,
}

/// One tag found riding with the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    pub tag_id: String,
    pub plate: String,
    pub readers: u32,
    pub passes: u32,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

fn window(from_ms: i64, to_ms: i64) -> Result<(), RegistryError> {
    if from_ms <= 0 || to_ms < from_ms {
        return Err(RegistryError::invalid(
            "from_ms",
            "and to_ms must give a window (from_ms <= to_ms)",
        ));
    }
    if to_ms - from_ms > MAX_WINDOW_MS {
        return Err(RegistryError::invalid(
            "to_ms",
            "is more than 7 days after from_ms",
        ));
    }
    Ok(())
}

fn reason(reason: &str) -> Result<String, RegistryError> {
    greenplate_registry::validate::text("reason", reason, 200)
}

impl Alerting {
    /// Which tags passed the watched readers with a first read in `[from_ms, to_ms]`,
    /// oldest first, at most `limit` (and [`MAX_STAKEOUT`]). Audited with `why`.
    pub async fn stakeout(
        &self,
        caller: &Caller,
        watched: &Watched,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
        why: &str,
    ) -> Result<Stakeout, AlertingError> {
        let found = self
            .stakeout_unaudited(watched, from_ms, to_ms, limit, why)
            .await;
        let subject = match &found {
            Ok(s) => format!(
                "stakeout of {} readers {from_ms}..{to_ms}: {} passes",
                s.reader_ids.len(),
                s.passes.len()
            ),
            Err(_) => format!("stakeout {from_ms}..{to_ms}"),
        };
        self.registry
            .audit_lookup(caller, "stakeout", &subject, found.is_ok(), why)
            .await?;
        found
    }

    async fn stakeout_unaudited(
        &self,
        watched: &Watched,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
        why: &str,
    ) -> Result<Stakeout, AlertingError> {
        reason(why)?;
        window(from_ms, to_ms)?;
        let reader_ids: Vec<String> = match watched {
            Watched::Readers(ids) => {
                let mut ids: Vec<String> = ids.iter().map(|i| i.trim().to_owned()).collect();
                ids.sort();
                ids.dedup();
                ids.retain(|i| !i.is_empty());
                ids
            }
            Watched::Polygon(geojson) => {
                let area = crate::zones::parse_geojson(geojson).map_err(|e| {
                    RegistryError::InvalidValue {
                        field: "polygon_geojson",
                        reason: e.to_string(),
                    }
                })?;
                self.registry
                    .readers()
                    .all()
                    .into_iter()
                    .filter(|r| area.contains(&Point::new(r.lon, r.lat)))
                    .map(|r| r.id.clone())
                    .collect()
            }
        };
        if reader_ids.is_empty() {
            return Err(RegistryError::invalid(
                "reader_ids",
                "name no reader (or the polygon holds none)",
            )
            .into());
        }
        if reader_ids.len() > MAX_READERS {
            return Err(RegistryError::invalid("reader_ids", "name more than 500 readers").into());
        }
        let limit = limit.clamp(1, MAX_STAKEOUT);
        let b = self.db().backend();
        let n = reader_ids.len();
        let sql = format!(
            "SELECT tag_id, reader_id, first_seen_ms, last_seen_ms, reads FROM passes \
             WHERE reader_id IN {} AND first_seen_ms >= {} AND first_seen_ms <= {} \
             ORDER BY first_seen_ms, pass_id LIMIT {}",
            b.placeholders(1, n),
            b.ph(n + 1),
            b.ph(n + 2),
            b.ph(n + 3),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &reader_ids {
            q = q.bind(id);
        }
        let rows = q
            .bind(from_ms)
            .bind(to_ms)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(self.db().pool())
            .await?;
        let mut passes = rows
            .iter()
            .map(|r| {
                Ok(StakeoutPass {
                    tag_id: r.try_get("tag_id")?,
                    plate: String::new(),
                    reader_id: r.try_get("reader_id")?,
                    first_seen_ms: r.try_get("first_seen_ms")?,
                    last_seen_ms: r.try_get("last_seen_ms")?,
                    reads: u32::try_from(r.try_get::<i64, _>("reads")?).unwrap_or(u32::MAX),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let truncated = passes.len() > limit;
        passes.truncate(limit);
        let plates = self
            .plates_of(passes.iter().map(|p| p.tag_id.clone()).collect())
            .await?;
        for p in &mut passes {
            p.plate = plates.get(&p.tag_id).cloned().unwrap_or_default();
        }
        Ok(Stakeout {
            passes,
            reader_ids,
            truncated,
        })
    }

    /// Tags that passed the subject's readers within `delta_ms` of it on at least
    /// `min_readers` distinct readers, most readers first; with how many of the subject's
    /// passes were searched. Audited with `why`.
    pub async fn companions(
        &self,
        caller: &Caller,
        query: &CompanionQuery,
        why: &str,
    ) -> Result<(Vec<Companion>, usize), AlertingError> {
        let found = self.companions_unaudited(query, why).await;
        let of = match &query.subject {
            BikeKey::Plate(p) => format!("companions of plate {p}"),
            BikeKey::Tag(t) => format!("companions of tag {t}"),
        };
        let subject = match &found {
            Ok((c, _)) => format!("{of}: {} found", c.len()),
            Err(_) => of,
        };
        self.registry
            .audit_lookup(caller, "companions", &subject, found.is_ok(), why)
            .await?;
        found
    }

    async fn companions_unaudited(
        &self,
        query: &CompanionQuery,
        why: &str,
    ) -> Result<(Vec<Companion>, usize), AlertingError> {
        reason(why)?;
        window(query.from_ms, query.to_ms)?;
        if !(1..=MAX_DELTA_MS).contains(&query.delta_ms) {
            return Err(RegistryError::invalid("delta_ms", "must be 1 to 600000").into());
        }
        if query.min_readers < 2 {
            return Err(RegistryError::invalid("min_readers", "must be at least 2").into());
        }
        let subject = self.registry.track_subject(&query.subject).await?;
        let mine = self
            .history
            .track_newest(
                &subject.tags,
                query.from_ms,
                query.to_ms,
                MAX_SUBJECT_PASSES,
            )
            .await?;
        // At the cap, the search starts at the oldest of the newest passes.
        let from_ms = match mine.last() {
            Some(oldest) if mine.len() == MAX_SUBJECT_PASSES => oldest.first_seen_ms,
            _ => query.from_ms,
        };
        let found = self
            .riding_with(&subject.tags, &mine, from_ms, query)
            .await?;
        let plates = self
            .plates_of(found.iter().map(|c| c.tag_id.clone()).collect())
            .await?;
        let found: Vec<Companion> = found
            .into_iter()
            .map(|mut c| {
                c.plate = plates.get(&c.tag_id).cloned().unwrap_or_default();
                c
            })
            .collect();
        Ok((found, mine.len()))
    }

    /// The companions of the subject's passes `mine` (those that began at or after
    /// `from_ms`): one indexed range read per subject pass (`passes_reader_time`), folded
    /// here. A single self-join would leave the choice of plan to the database, and
    /// PostgreSQL's estimate of a time-range join picks a scan of every pass (0.6-1.6 s on
    /// a district's day, against 5 ms this way).
    async fn riding_with(
        &self,
        tags: &[greenplate_registry::TagId],
        mine: &[crate::history::Pass],
        from_ms: i64,
        query: &CompanionQuery,
    ) -> Result<Vec<Companion>, AlertingError> {
        struct Seen {
            readers: std::collections::BTreeSet<String>,
            passes: std::collections::HashSet<i64>,
            first: i64,
            last: i64,
        }
        let own: std::collections::HashSet<String> = tags.iter().map(|t| t.to_string()).collect();
        let mine: Vec<_> = mine.iter().filter(|p| p.first_seen_ms >= from_ms).collect();
        let b = self.db().backend();
        let mut seen: HashMap<String, Seen> = HashMap::new();
        for chunk in mine.chunks(100) {
            let conds = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(reader_id = {} AND first_seen_ms >= {} AND first_seen_ms <= {})",
                        b.ph(3 * i + 1),
                        b.ph(3 * i + 2),
                        b.ph(3 * i + 3)
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!(
                "SELECT pass_id, tag_id, reader_id, first_seen_ms, last_seen_ms FROM passes \
                 WHERE {conds}"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q
                    .bind(p.reader_id.to_string())
                    .bind(p.first_seen_ms - query.delta_ms)
                    .bind(p.first_seen_ms + query.delta_ms);
            }
            for row in q.fetch_all(self.db().pool()).await? {
                let tag: String = row.try_get("tag_id")?;
                if own.contains(&tag) {
                    continue;
                }
                let first: i64 = row.try_get("first_seen_ms")?;
                let last: i64 = row.try_get("last_seen_ms")?;
                let s = seen.entry(tag).or_insert_with(|| Seen {
                    readers: Default::default(),
                    passes: Default::default(),
                    first,
                    last,
                });
                s.readers.insert(row.try_get("reader_id")?);
                s.passes.insert(row.try_get("pass_id")?);
                s.first = s.first.min(first);
                s.last = s.last.max(last);
            }
        }
        let mut found: Vec<Companion> = seen
            .into_iter()
            .filter(|(_, s)| s.readers.len() >= query.min_readers as usize)
            .map(|(tag_id, s)| Companion {
                tag_id,
                plate: String::new(),
                readers: u32::try_from(s.readers.len()).unwrap_or(u32::MAX),
                passes: u32::try_from(s.passes.len()).unwrap_or(u32::MAX),
                first_seen_ms: s.first,
                last_seen_ms: s.last,
            })
            .collect();
        found.sort_by(|a, b| {
            b.readers
                .cmp(&a.readers)
                .then(b.passes.cmp(&a.passes))
                .then(a.tag_id.cmp(&b.tag_id))
        });
        found.truncate(query.limit.clamp(1, MAX_COMPANIONS));
        Ok(found)
    }

    /// The plates of the bikes that have these tags (a tag no bike has is left out).
    async fn plates_of(
        &self,
        mut tags: Vec<String>,
    ) -> Result<HashMap<String, String>, AlertingError> {
        tags.sort();
        tags.dedup();
        let mut out = HashMap::new();
        let b = self.db().backend();
        for chunk in tags.chunks(500) {
            let sql = format!(
                "SELECT g.tag_id, b.plate FROM tags g JOIN bikes b ON b.bike_id = g.bike_id \
                 WHERE g.tag_id IN {}",
                b.placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for t in chunk {
                q = q.bind(t);
            }
            for row in q.fetch_all(self.db().pool()).await? {
                out.insert(row.try_get("tag_id")?, row.try_get("plate")?);
            }
        }
        Ok(out)
    }
}
