//! Bulk import of existing registrations from CSV (`greenplate registry import FILE.csv`).
//!
//! The file has a header row with exactly these columns, in any order:
//! `tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number`.
//! Every row goes through the same validation as a kiosk registration. Rejected rows are
//! reported with their line number and reason; accepted rows are committed in batches. Each
//! row's idempotency key is `import:<TAG ID>`, so importing the same file again changes
//! nothing (its rows come back as unchanged). Imported bikes have no PIN: the owner sets one
//! at a kiosk (`SetPin`) before arming.

use std::collections::HashMap;
use std::io::Read;

use crate::auth::Caller;
use crate::bikes::{NewBike, NewOwner, Registered, ValidBike};
use crate::error::RegistryError;
use crate::hot_index::TagState;
use crate::store::Registry;

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

    /// Commits one batch in one transaction. If the database refuses a statement (a race
    /// with a kiosk), the batch is rolled back and redone one row per transaction.
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
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut fallback = false;
        for (line, bike) in batch.iter() {
            match self.insert_bike(&mut tx, caller, bike, None).await {
                Ok(r) => outcomes.push((*line, bike.tag, Ok(r))),
                Err(RegistryError::Db(_)) => {
                    fallback = true;
                    break;
                }
                Err(e) => outcomes.push((*line, bike.tag, Err(e))),
            }
        }
        if fallback {
            drop(tx); // rolls back
            outcomes.clear();
            for (line, bike) in batch.iter() {
                let mut tx = self.db.begin_write().await.map_err(RegistryError::from)?;
                let r = self.insert_bike(&mut tx, caller, bike, None).await;
                if r.is_ok() {
                    tx.commit().await.map_err(RegistryError::from)?;
                }
                outcomes.push((*line, bike.tag, r));
            }
        } else {
            tx.commit().await.map_err(RegistryError::from)?;
        }
        for (line, tag, outcome) in outcomes {
            match outcome {
                Ok(Registered {
                    bike_id,
                    created: true,
                }) => {
                    self.index.set(tag, TagState::new(bike_id));
                    report.accepted += 1;
                }
                Ok(_) => report.unchanged += 1,
                Err(e) => report.rejected.push(RejectedRow {
                    line,
                    reason: e.to_string(),
                }),
            }
        }
        batch.clear();
        Ok(())
    }
}
