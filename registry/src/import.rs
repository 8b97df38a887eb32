//! Bulk import of existing registrations from CSV (`greenplate registry import FILE.csv`).
//!
//! The file has a header row with exactly these columns, in any order:
//! `tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number`.
//! Every row goes through the same validation as a kiosk registration. Rejected rows are
//! reported with their line number and reason; accepted rows are committed in batches. Each
//! row's idempotency key is `import:<TAG ID>`, so importing the same file again changes
//! nothing (its rows come back as unchanged). Imported bikes have no PIN: the owner sets one
//! at a kiosk (`SetPin`) before arming.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::auth::Caller;
use crate::bikes::{NewBike, NewOwner, Registered, ValidBike};
use crate::db::{Backend, now_ms};
use crate::error::RegistryError;
use crate::hot_index::TagState;
use crate::store::Registry;
use crate::validate::TagId;

/// The columns of an import file.
pub const COLUMNS: [&str; 9] = [
    "tag_id",
    "plate",
    "owner_name",
    "owner_id_number",
    "owner_phone",
    "make",
    "model",
    "color",
    "frame_number",
];

/// Rows per transaction.
pub const BATCH: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("header must have the columns {expected}; missing {missing}")]
    Header { expected: String, missing: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: u64,
    pub accepted: u64,
    pub unchanged: u64,
    pub rejected: Vec<RejectedRow>,
}

impl Registry {
    /// Imports a CSV file; `progress(rows_read)` is called after each batch.
    pub async fn import_csv<R: Read>(
        &self,
        caller: &Caller,
        input: R,
        mut progress: impl FnMut(u64),
    ) -> Result<ImportReport, ImportError> {
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(input);
        let header = csv.headers()?.clone();
        let pos: HashMap<&str, usize> = header.iter().enumerate().map(|(i, h)| (h, i)).collect();
        let missing: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|c| !pos.contains_key(c))
            .collect();
        if !missing.is_empty() {
            return Err(ImportError::Header {
                expected: COLUMNS.join(","),
                missing: missing.join(","),
            });
        }
        let col: Vec<usize> = COLUMNS.iter().map(|c| pos[c]).collect();
        let mut report = ImportReport::default();
        let mut batch: Vec<(u64, ValidBike)> = Vec::with_capacity(BATCH);
        let mut record = csv::StringRecord::new();
        loop {
            let more = match csv.read_record(&mut record) {
                Ok(more) => more,
                Err(e) => {
                    // A malformed line (bad UTF-8, bad quoting) is that line's rejection.
                    let line = e.position().map_or(0, |p| p.line());
                    report.rows += 1;
                    report.rejected.push(RejectedRow {
                        line,
                        reason: format!("unreadable CSV: {e}"),
                    });
                    continue;
                }
            };
            if !more {
                break;
            }
            report.rows += 1;
            let line = record.position().map_or(0, |p| p.line());
            let field = |i: usize| record.get(col[i]).unwrap_or("").to_owned();
            let tag = field(0);
            let new = NewBike {
                request_id: format!("import:{}", tag.trim().to_ascii_uppercase()),
                tag_id: tag,
                plate: field(1),
                owner: NewOwner {
                    name: field(2),
                    id_number: field(3),
                    phone: field(4),
                },
                make: field(5),
                model: field(6),
                color: field(7),
                frame_number: field(8),
                pin: None,
            };
            match new.validate() {
                Ok(v) => batch.push((line, v)),
                Err(e) => report.rejected.push(RejectedRow {
                    line,
                    reason: e.to_string(),
                }),
            }
            if batch.len() >= BATCH {
                self.import_batch(caller, &mut batch, &mut report).await?;
                progress(report.rows);
            }
        }
        self.import_batch(caller, &mut batch, &mut report).await?;
        progress(report.rows);
        report.rejected.sort_by_key(|r| r.line);
        Ok(report)
    }

    /// Commits one batch in one transaction, with multi-row statements (a handful of round
    /// trips per thousand rows instead of several per row). If the database refuses a
    /// statement (a race with a kiosk), the batch is rolled back and redone one row per
    /// transaction through the kiosk path.
    async fn import_batch(
        &self,
        caller: &Caller,
        batch: &mut Vec<(u64, ValidBike)>,
        report: &mut ImportReport,
    ) -> Result<(), ImportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await.map_err(RegistryError::from)?;
        if self.db.backend() == Backend::Sqlite {
            // A bulk load touches index pages all over the file: give this connection a
            // page cache that holds them (the service's connections keep the default).
            sqlx::query("PRAGMA cache_size = -262144")
                .execute(&mut *tx)
                .await
                .map_err(RegistryError::from)?;
        }
        let outcomes = match self.insert_many(&mut tx, caller, batch).await {
            Ok(outcomes) => {
                crate::changes::announce(&mut tx, &crate::changes::Change::All)
                    .await
                    .map_err(RegistryError::from)?;
                tx.commit().await.map_err(RegistryError::from)?;
                outcomes
            }
            Err(e) => {
                tracing::warn!(error = %e, "Batch import statement refused; redoing the batch row by row.");
                drop(tx); // rolls back
                let mut outcomes = Vec::with_capacity(batch.len());
                for (_, bike) in batch.iter() {
                    let mut tx = self.db.begin_write().await.map_err(RegistryError::from)?;
                    let r = self.insert_bike(&mut tx, caller, bike, None).await;
                    if r.is_ok() {
                        crate::changes::announce(&mut tx, &crate::changes::Change::Tag(bike.tag))
                            .await
                            .map_err(RegistryError::from)?;
                        tx.commit().await.map_err(RegistryError::from)?;
                    }
                    outcomes.push(r);
                }
                outcomes
            }
        };
        // A plate or tag may be on a watch list before its bike is registered.
        let watched: HashSet<TagId> = self
            .watched_among(
                &batch
                    .iter()
                    .map(|(_, b)| (b.tag, b.plate.clone()))
                    .collect::<Vec<_>>(),
            )
            .await?
            .into_iter()
            .collect();
        for ((line, bike), outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok(Registered {
                    bike_id,
                    created: true,
                }) => {
                    let state = TagState::new(bike_id).with_watched(watched.contains(&bike.tag));
                    self.index.set(bike.tag, state);
                    report.accepted += 1;
                }
                Ok(_) => report.unchanged += 1,
                Err(e) => report.rejected.push(RejectedRow {
                    line: *line,
                    reason: e.to_string(),
                }),
            }
        }
        batch.clear();
        Ok(())
    }

    /// The same decisions as [`Registry::insert_bike`], for many rows at once. Returns one
    /// outcome per row, in order.
    async fn insert_many(
        &self,
        tx: &mut AnyConnection,
        caller: &Caller,
        rows: &[(u64, ValidBike)],
    ) -> Result<Vec<Result<Registered, RegistryError>>, sqlx::Error> {
        let b = self.db.backend();
        let tags: Vec<String> = rows.iter().map(|(_, b)| b.tag.to_string()).collect();
        let rids: Vec<&str> = rows
            .iter()
            .map(|(_, b)| b.request_id.as_deref().unwrap_or(""))
            .collect();
        let plates: Vec<&str> = rows.iter().map(|(_, b)| b.plate.as_str()).collect();

        // What is already there.
        let mut by_request: HashMap<String, (i64, Option<String>, String)> = HashMap::new();
        for chunk in rids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT request_id, bike_id, tag_id, plate FROM bikes WHERE request_id IN {}",
                b.placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(*r);
            }
            for row in q.fetch_all(&mut *tx).await? {
                by_request.insert(
                    row.try_get("request_id")?,
                    (
                        row.try_get("bike_id")?,
                        row.try_get("tag_id")?,
                        row.try_get("plate")?,
                    ),
                );
            }
        }
        let mut tag_state: HashMap<String, String> = HashMap::new();
        for chunk in tags.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT tag_id, state FROM tags WHERE tag_id IN {}",
                b.placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for t in chunk {
                q = q.bind(t.as_str());
            }
            for row in q.fetch_all(&mut *tx).await? {
                tag_state.insert(row.try_get("tag_id")?, row.try_get("state")?);
            }
        }
        let mut plate_taken: HashSet<String> = HashSet::new();
        for chunk in plates.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT plate FROM bikes WHERE state = 'registered' AND plate IN {}",
                b.placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(*p);
            }
            for row in q.fetch_all(&mut *tx).await? {
                plate_taken.insert(row.try_get("plate")?);
            }
        }

        // Decide each row, in file order, as the kiosk path would have one after another.
        enum Plan {
            Done(Result<Registered, RegistryError>),
            Insert,
            SameAs(usize),
        }
        let mut plans = Vec::with_capacity(rows.len());
        let mut first_tag: HashMap<&str, usize> = HashMap::new();
        for (k, (_, bike)) in rows.iter().enumerate() {
            let tag = tags[k].as_str();
            let plan = if let Some((bike_id, t, p)) = by_request.get(rids[k]) {
                if t.as_deref() == Some(tag) && *p == bike.plate {
                    Plan::Done(Ok(Registered {
                        bike_id: *bike_id,
                        created: false,
                    }))
                } else {
                    Plan::Done(Err(RegistryError::AlreadyExists(format!(
                        "request_id {} (used for a different bike)",
                        rids[k]
                    ))))
                }
            } else if let Some(&j) = first_tag.get(tag) {
                // The same tag earlier in this batch: a repeat of that row, or a clash.
                if rows[j].1.plate == bike.plate {
                    Plan::SameAs(j)
                } else {
                    Plan::Done(Err(RegistryError::AlreadyExists(format!("tag {tag}"))))
                }
            } else if let Some(state) = tag_state.get(tag) {
                Plan::Done(Err(RegistryError::AlreadyExists(if state == "revoked" {
                    format!("tag {tag} (revoked; a revoked tag is never bound again)")
                } else {
                    format!("tag {tag}")
                })))
            } else if plate_taken.contains(&bike.plate) {
                Plan::Done(Err(RegistryError::AlreadyExists(format!(
                    "plate {}",
                    bike.plate
                ))))
            } else {
                first_tag.insert(tag, k);
                plate_taken.insert(bike.plate.clone());
                Plan::Insert
            };
            plans.push(plan);
        }
        let inserts: Vec<usize> = (0..rows.len())
            .filter(|&k| matches!(plans[k], Plan::Insert))
            .collect();

        // Owners: one upsert per distinct ID number; RETURNING gives every id.
        let now = now_ms();
        let mut owner_of_hash: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut owner_rows: Vec<(Vec<u8>, &ValidBike)> = Vec::new();
        let mut hash_of_row: HashMap<usize, Vec<u8>> = HashMap::with_capacity(inserts.len());
        let mut distinct: HashSet<Vec<u8>> = HashSet::new();
        for &k in &inserts {
            let b = &rows[k].1;
            let h = self.secrets.keyed_hash(b.owner.id_number.as_bytes());
            if distinct.insert(h.clone()) {
                owner_rows.push((h.clone(), b));
            }
            hash_of_row.insert(k, h);
        }
        for chunk in owner_rows.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO owners (name, id_number_hash, id_number_sealed, phone_sealed, created_at_ms) \
                 VALUES {} ON CONFLICT (id_number_hash) DO UPDATE SET id_number_hash = excluded.id_number_hash \
                 RETURNING owner_id, id_number_hash",
                b.values(chunk.len(), 5)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (h, b) in chunk {
                q = q
                    .bind(b.owner.name.clone())
                    .bind(h.clone())
                    .bind(self.secrets.seal(b.owner.id_number.as_bytes()))
                    .bind(self.secrets.seal(b.owner.phone.as_bytes()))
                    .bind(now);
            }
            for row in q.fetch_all(&mut *tx).await? {
                owner_of_hash.insert(row.try_get("id_number_hash")?, row.try_get("owner_id")?);
            }
        }

        // Bikes, then their tags, then the audit records.
        let who = caller.audit_name();
        let mut bike_of_tag: HashMap<String, i64> = HashMap::new();
        for chunk in inserts.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO bikes (tag_id, plate, owner_id, make, model, color, frame_number, \
                                    request_id, registered_by, registered_at_ms) \
                 VALUES {} RETURNING bike_id, tag_id",
                b.values(chunk.len(), 10)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for &k in chunk {
                let b = &rows[k].1;
                let owner_id = hash_of_row
                    .get(&k)
                    .and_then(|h| owner_of_hash.get(h))
                    .copied()
                    .unwrap_or(0);
                q = q
                    .bind(tags[k].clone())
                    .bind(b.plate.clone())
                    .bind(owner_id)
                    .bind(b.make.clone())
                    .bind(b.model.clone())
                    .bind(b.color.clone())
                    .bind(b.frame_number.clone())
                    .bind(b.request_id.clone())
                    .bind(who.clone())
                    .bind(now);
            }
            for row in q.fetch_all(&mut *tx).await? {
                bike_of_tag.insert(row.try_get("tag_id")?, row.try_get("bike_id")?);
            }
        }
        for chunk in inserts.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO tags (tag_id, bike_id, state, bound_at_ms) VALUES {}",
                crate::db::values_with(chunk.len(), 3, |n| format!(
                    "({}, {}, 'active', {})",
                    b.ph(n),
                    b.ph(n + 1),
                    b.ph(n + 2)
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for &k in chunk {
                q = q
                    .bind(tags[k].clone())
                    .bind(bike_of_tag.get(&tags[k]).copied().unwrap_or(0))
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
            let sql = format!(
                "INSERT INTO audit_log (at_ms, actor, action, subject) VALUES {}",
                crate::db::values_with(chunk.len(), 3, |n| format!(
                    "({}, {}, 'register_bike', {})",
                    b.ph(n),
                    b.ph(n + 1),
                    b.ph(n + 2)
                ))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for &k in chunk {
                let bike_id = bike_of_tag.get(&tags[k]).copied().unwrap_or(0);
                q = q.bind(now).bind(who.clone()).bind(format!(
                    "bike {bike_id} plate {} tag {} (import line {})",
                    rows[k].1.plate, tags[k], rows[k].0
                ));
            }
            q.execute(&mut *tx).await?;
        }

        let mut out: Vec<Result<Registered, RegistryError>> = Vec::with_capacity(rows.len());
        for (k, plan) in plans.into_iter().enumerate() {
            out.push(match plan {
                Plan::Done(r) => r,
                Plan::Insert => match bike_of_tag.get(&tags[k]) {
                    Some(&bike_id) => Ok(Registered {
                        bike_id,
                        created: true,
                    }),
                    None => Err(RegistryError::Corrupt(format!(
                        "tag {} not returned",
                        tags[k]
                    ))),
                },
                Plan::SameAs(j) => match &out[j] {
                    Ok(r) => Ok(Registered {
                        bike_id: r.bike_id,
                        created: false,
                    }),
                    Err(e) => Err(RegistryError::AlreadyExists(format!(
                        "tag {} ({e})",
                        tags[k]
                    ))),
                },
            });
        }
        Ok(out)
    }
}

/// Values per IN list.
const IN_CHUNK: usize = 500;
/// Rows per multi-row INSERT (at most 10 parameters each: well under SQLite's 32,766).
const INSERT_CHUNK: usize = 500;
