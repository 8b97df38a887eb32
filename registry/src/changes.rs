//! What one node tells the others when it commits a change to the registry's hot state:
//! [`Change`], announced with `pg_notify` inside the committing transaction ([`announce`]),
//! so PostgreSQL delivers it exactly when (and only if) the change commits. The listening
//! side is [`crate::sync`]. On SQLite nothing is announced.

use sqlx::AnyConnection;

use crate::validate::TagId;

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "greenplate_changes";

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The bike that has (or had) this tag: its tags' states.
    Tag(TagId),
    /// A reader was added, enabled or disabled, or re-keyed (the old secret's grace, ms).
    Reader { id: String, grace_ms: i64 },
    /// A kiosk or patrol-unit token was issued or revoked.
    Tokens,
    /// Zones or patrol units (alerting's).
    Zones,
    /// Anything: reload it all (after a bulk import).
    All,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Tag(t) => format!("tag:{t}"),
            Change::Reader { id, grace_ms } => format!("reader:{grace_ms}:{id}"),
            Change::Tokens => "tokens".into(),
            Change::Zones => "zones".into(),
            Change::All => "all".into(),
        }
    }

    /// Parses an announcement; `None` for one this version does not know.
    pub fn decode(s: &str) -> Option<Self> {
        match s.split_once(':') {
            Some(("tag", t)) => TagId::parse(t).map(Change::Tag),
            Some(("reader", rest)) => {
                let (grace, id) = rest.split_once(':')?;
                Some(Change::Reader {
                    id: id.to_owned(),
                    grace_ms: grace.parse().ok()?,
                })
            }
            None if s == "tokens" => Some(Change::Tokens),
            None if s == "zones" => Some(Change::Zones),
            None if s == "all" => Some(Change::All),
            _ => None,
        }
    }
}

/// Announces `change` from inside the transaction on `conn` (PostgreSQL only).
pub async fn announce(conn: &mut AnyConnection, change: &Change) -> Result<(), sqlx::Error> {
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(change.encode())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        let tag = TagId::parse("E28011606000000000000A01").unwrap();
        for c in [
            Change::Tag(tag),
            Change::Reader {
                id: "rd-1:odd".into(),
                grace_ms: 60_000,
            },
            Change::Tokens,
            Change::Zones,
            Change::All,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("tag:nothex"), None);
        assert_eq!(Change::decode("future:thing"), None);
    }
}
