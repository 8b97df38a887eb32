//! Bulk import of the police system's lists (issue #17): a watch list or a theft list, as
//! CSV (a header row naming the columns, in any order) or JSON (an array of objects with the
//! same keys; values may be strings, numbers or booleans).
//!
//! - Watch list: `entry_id` (required: the police system's id, so importing the same file
//!   again changes the same entries), `plate` or `tag_id`, `priority` (1-3 or
//!   normal/urgent/critical), `reason`, `case_number`, `covert` (true/false, yes/no, 1/0;
//!   default false), `expires_at_ms`. Each row is [`Registry::add_watch_entry`].
//! - Theft list: `plate`, `stolen_at_ms` (optional), `place`, `notes`. Each row is
//!   [`Registry::report_stolen`]: a bike already reported stolen is unchanged, so the same
//!   file imports once; the look-back runs for each new report.
//!
//! Every row is validated like the single call and audited as one; a bad row is reported
//! with its line (CSV, the header being line 1) or its position (JSON, from 1), and the
//! others go on. The import itself is audited with its totals.

use std::collections::HashMap;

use crate::auth::Caller;
use crate::error::RegistryError;
use crate::store::{Registry, audit};
use crate::thefts::TheftDetails;
use crate::watch::NewWatchEntry;

/// Rows in one import at most.
pub const MAX_ROWS: usize = 10_000;

/// Which list a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Watch,
    Theft,
}

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Csv,
    Json,
}

/// A row that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The CSV line (header: 1) or the JSON array position (from 1).
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListImport {
    pub rows: u64,
    /// New entries or theft reports.
    pub added: u64,
    /// Watch entries changed, or bikes already reported stolen.
    pub unchanged_or_changed: u64,
    pub errors: Vec<RowError>,
}

type Row = (u64, HashMap<String, String>);

/// The rows of a file, each with its line; a file that cannot be read at all is an error.
fn rows(format: ListFormat, data: &[u8]) -> Result<Vec<Row>, RegistryError> {
    let too_many = || RegistryError::invalid("data", "holds more than 10,000 rows: split it");
    match format {
        ListFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .flexible(true)
                .from_reader(data);
            let header: Vec<String> = csv
                .headers()
                .map_err(|e| RegistryError::InvalidValue {
                    field: "data",
                    reason: format!("has an unreadable CSV header: {e}"),
                })?
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            let mut out = Vec::new();
            for record in csv.records() {
                if out.len() == MAX_ROWS {
                    return Err(too_many());
                }
                match record {
                    Ok(r) => {
                        let line = r.position().map_or(0, |p| p.line());
                        let fields = header
                            .iter()
                            .cloned()
                            .zip(r.iter().map(str::to_owned))
                            .collect();
                        out.push((line, fields));
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        let mut fields = HashMap::new();
                        fields.insert(String::new(), format!("unreadable CSV: {e}"));
                        out.push((line, fields));
                    }
                }
            }
            Ok(out)
        }
        ListFormat::Json => {
            let items: Vec<serde_json::Value> =
                serde_json::from_slice(data).map_err(|e| RegistryError::InvalidValue {
                    field: "data",
                    reason: format!("must be a JSON array of objects: {e}"),
                })?;
            if items.len() > MAX_ROWS {
                return Err(too_many());
            }
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let mut fields = HashMap::new();
                    match item {
                        serde_json::Value::Object(map) => {
                            for (k, v) in map {
                                let v = match v {
                                    serde_json::Value::String(s) => s,
                                    serde_json::Value::Null => String::new(),
                                    other => other.to_string(),
                                };
                                fields.insert(k.to_ascii_lowercase(), v);
                            }
                        }
                        _ => {
                            fields.insert(String::new(), "not a JSON object".to_owned());
                        }
                    }
                    (i as u64 + 1, fields)
                })
                .collect())
        }
    }
}

fn priority(raw: &str) -> Result<u32, RegistryError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "normal" => Ok(1),
        "2" | "urgent" => Ok(2),
        "3" | "critical" => Ok(3),
        _ => Err(RegistryError::invalid(
            "priority",
            "must be 1-3 or normal, urgent, critical",
        )),
    }
}

fn flag(field: &'static str, raw: &str) -> Result<bool, RegistryError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "n" => Ok(false),
        "1" | "true" | "yes" | "y" => Ok(true),
        _ => Err(RegistryError::invalid(field, "must be true or false")),
    }
}

fn millis(field: &'static str, raw: &str) -> Result<i64, RegistryError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(0);
    }
    raw.parse::<i64>()
        .map_err(|_| RegistryError::invalid(field, "must be a Unix time in milliseconds"))
}

impl Registry {
    /// Imports a watch or theft list (see the module docs). Fails as a whole only when the
    /// file cannot be read at all; each bad row is in [`ListImport::errors`].
    pub async fn import_list(
        &self,
        caller: &Caller,
        kind: ListKind,
        format: ListFormat,
        data: &[u8],
    ) -> Result<ListImport, RegistryError> {
        let rows = rows(format, data)?;
        let mut report = ListImport::default();
        for (line, fields) in rows {
            report.rows += 1;
            let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
            let done = match fields.get("") {
                Some(unreadable) => Err(RegistryError::InvalidValue {
                    field: "row",
                    reason: unreadable.clone(),
                }),
                None => match kind {
                    ListKind::Watch => self.import_watch_row(caller, &get).await,
                    ListKind::Theft => self.import_theft_row(caller, &get).await,
                },
            };
            match done {
                Ok(true) => report.added += 1,
                Ok(false) => report.unchanged_or_changed += 1,
                // The database, not the row: stop (what was imported stays; importing the
                // file again finishes it).
                Err(
                    e @ (RegistryError::Db(_) | RegistryError::Crypto | RegistryError::Corrupt(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => report.errors.push(RowError {
                    line,
                    reason: e.to_string(),
                }),
            }
        }
        let mut tx = self.db.begin_write().await?;
        audit(
            &mut tx,
            caller,
            match kind {
                ListKind::Watch => "import_watch_list",
                ListKind::Theft => "import_theft_list",
            },
            &format!(
                "{} rows: {} added, {} unchanged or changed, {} rejected",
                report.rows,
                report.added,
                report.unchanged_or_changed,
                report.errors.len()
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// One watch-list row; true if it added an entry.
    async fn import_watch_row(
        &self,
        caller: &Caller,
        get: &impl Fn(&str) -> String,
    ) -> Result<bool, RegistryError> {
        let entry_id = get("entry_id");
        if entry_id.trim().is_empty() {
            return Err(RegistryError::invalid(
                "entry_id",
                "is required in an import (it makes the import repeatable)",
            ));
        }
        let new = NewWatchEntry {
            entry_id: Some(entry_id.trim().to_owned()),
            plate: get("plate"),
            tag_id: get("tag_id"),
            priority: priority(&get("priority"))?,
            reason: get("reason"),
            case_number: get("case_number"),
            covert: flag("covert", &get("covert"))?,
            expires_at_ms: millis("expires_at_ms", &get("expires_at_ms"))?,
        };
        Ok(self.add_watch_entry(caller, &new).await?.1)
    }

    /// One theft-list row; true if it opened a theft report.
    async fn import_theft_row(
        &self,
        caller: &Caller,
        get: &impl Fn(&str) -> String,
    ) -> Result<bool, RegistryError> {
        let details = TheftDetails {
            stolen_at_ms: millis("stolen_at_ms", &get("stolen_at_ms"))?,
            place: get("place"),
            notes: get("notes"),
        };
        let report = self.report_stolen(caller, &get("plate"), &details).await?;
        Ok(!report.already_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_rows_carry_their_lines_and_fields() {
        let csv = b"entry_id,Plate,priority\nPS-1,A1,2\nPS-2,\xff\xfe,3\n";
        let read = rows(ListFormat::Csv, csv).unwrap();
        assert_eq!(read[0].0, 2);
        assert_eq!(read[0].1["plate"], "A1");
        assert!(
            read[1].1.contains_key(""),
            "the unreadable line is its own row"
        );
        let json = br#"[{"entry_id":"PS-1","priority":2,"covert":true}, 7]"#;
        let rows = rows(ListFormat::Json, json).unwrap();
        assert_eq!(rows[0].1["priority"], "2");
        assert_eq!(rows[0].1["covert"], "true");
        assert_eq!(
            (rows[1].0, rows[1].1[""].as_str()),
            (2, "not a JSON object")
        );
        assert!(super::rows(ListFormat::Json, b"{}").is_err());
    }

    #[test]
    fn priorities_and_flags_in_words_or_numbers() {
        assert_eq!(priority("Urgent").unwrap(), 2);
        assert_eq!(priority("3").unwrap(), 3);
        assert!(priority("4").is_err());
        assert!(flag("covert", "yes").unwrap());
        assert!(!flag("covert", "").unwrap());
        assert!(flag("covert", "maybe").is_err());
    }
}
