//! Rotating the at-rest key: every sealed value (owners' ID numbers and phones, readers'
//! MQTT secrets, the shared server keys) is opened with the old key and sealed again with the new one, and the
//! owners' keyed ID hashes are recomputed, in one transaction: either all of the database is
//! under the new key or none of it. Run it with every node stopped (a running node holds the
//! old key) and the schema migrated (`store::migrations`); `greenplate registry rotate-key`
//! wraps it.

use sqlx::Row;

use crate::db::{Db, now_ms};
use crate::error::RegistryError;
use crate::secrets::SecretBox;

/// What a rotation re-sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rekeyed {
    pub owners: u64,
    pub readers: u64,
    /// Shared server keys (the claim-signing key).
    pub keys: u64,
}

/// Which key the database is under, judged by one sealed value (a reader's secret or an
/// owner's phone). `None` when nothing is sealed yet (any key will do).
pub async fn opens_with(db: &Db, key: &SecretBox) -> Result<Option<bool>, RegistryError> {
    let sample = sqlx::query(
        "SELECT secret_sealed AS sealed FROM readers \
         UNION ALL SELECT phone_sealed AS sealed FROM owners \
         UNION ALL SELECT sealed FROM server_keys LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?;
    Ok(match sample {
        None => None,
        Some(row) => Some(key.open(&row.try_get::<Vec<u8>, _>("sealed")?).is_ok()),
    })
}

/// Re-seals the database from `old` to `new` in one transaction, audited as `actor`.
/// Fails, changing nothing, if any value does not open with `old`.
pub async fn rekey(
    db: &Db,
    old: &SecretBox,
    new: &SecretBox,
    actor: &str,
) -> Result<Rekeyed, RegistryError> {
    let b = db.backend();
    let mut tx = db.begin_write().await?;
    let mut done = Rekeyed::default();

    let owners = sqlx::query("SELECT owner_id, id_number_sealed, phone_sealed FROM owners")
        .fetch_all(&mut *tx)
        .await?;
    let update_owner = format!(
        "UPDATE owners SET id_number_hash = {}, id_number_sealed = {}, phone_sealed = {} \
         WHERE owner_id = {}",
        b.ph(1),
        b.ph(2),
        b.ph(3),
        b.ph(4)
    );
    for row in owners {
        let id: i64 = row.try_get("owner_id")?;
        let id_number = old.open(&row.try_get::<Vec<u8>, _>("id_number_sealed")?)?;
        let phone = old.open(&row.try_get::<Vec<u8>, _>("phone_sealed")?)?;
        sqlx::query(sqlx::AssertSqlSafe(update_owner.clone()))
            .bind(new.keyed_hash(&id_number))
            .bind(new.seal(&id_number))
            .bind(new.seal(&phone))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        done.owners += 1;
    }

    let readers = sqlx::query("SELECT reader_id, secret_sealed FROM readers")
        .fetch_all(&mut *tx)
        .await?;
    let update_reader = format!(
        "UPDATE readers SET secret_sealed = {} WHERE reader_id = {}",
        b.ph(1),
        b.ph(2)
    );
    for row in readers {
        let id: String = row.try_get("reader_id")?;
        let secret = old.open(&row.try_get::<Vec<u8>, _>("secret_sealed")?)?;
        sqlx::query(sqlx::AssertSqlSafe(update_reader.clone()))
            .bind(new.seal(&secret))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        done.readers += 1;
    }

    let keys = sqlx::query("SELECT name, sealed FROM server_keys")
        .fetch_all(&mut *tx)
        .await?;
    let update_key = format!(
        "UPDATE server_keys SET sealed = {} WHERE name = {}",
        b.ph(1),
        b.ph(2)
    );
    for row in keys {
        let name: String = row.try_get("name")?;
        let key = old.open(&row.try_get::<Vec<u8>, _>("sealed")?)?;
        sqlx::query(sqlx::AssertSqlSafe(update_key.clone()))
            .bind(new.seal(&key))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        done.keys += 1;
    }

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_log (at_ms, actor, action, subject) VALUES ({}, {}, 'rotate_key', {})",
        b.ph(1),
        b.ph(2),
        b.ph(3)
    )))
    .bind(now_ms())
    .bind(actor)
    .bind(format!(
        "{} owners, {} readers, {} server keys re-sealed",
        done.owners, done.readers, done.keys
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}
