//! `greenplate registry rotate-key`: moves the database to a new at-rest key
//! ([`greenplate_registry::rekey`]), with every node stopped.
//!
//! Where the key lives decides the steps:
//! - `secret_key` in the config or `GREENPLATE_SECRET_KEY` (an operator's secret store):
//!   the new key is given (`--new-key`), the database is re-sealed, and the operator puts the
//!   new key wherever the old one was, on every node, before starting them.
//! - the data directory's `secret.key` (one machine, the default): the new key (given, or
//!   generated) is first written beside it as `secret.key.next`, the database is re-sealed
//!   in one transaction, then `secret.key.next` replaces `secret.key`. A crash between the
//!   commit and the rename leaves `secret.key.next`; the service then refuses to start, and
//!   running the command again finds which key the database is under and finishes.

use std::path::{Path, PathBuf};

use greenplate_registry::rekey::{Rekeyed, opens_with, rekey};
use greenplate_registry::{Db, DbError, RegistryError, SecretBox};

use crate::config::{Config, ConfigError, parse_key};
use crate::data_dir::{self, KEY_FILE, NEXT_KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum RotateKeyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the key comes from secret_key / GREENPLATE_SECRET_KEY: give the new one with --new-key \
         (64 hex digits), then set it in place of the old one on every node"
    )]
    NewKeyNeeded,
    #[error("the new key is the key in force")]
    SameKey,
    #[error("the database does not open with the key in force (nor with the new one)")]
    WrongKey,
}

/// What the command did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Re-sealed; the new key is in `key_file` (or, for a configured key, must be put there
    /// by the operator: `None`).
    Rotated {
        rekeyed: Rekeyed,
        key_file: Option<PathBuf>,
    },
    /// An interrupted rotation had committed; its key file is now in place.
    Finished { key_file: PathBuf },
    /// The database was already under the new (configured) key.
    AlreadyRotated,
}

/// Rotates the at-rest key of `config`'s database to `new_key` (64 hex digits; generated
/// when the key lives in the data directory and none is given).
pub async fn rotate_key(
    config: &Config,
    new_key: Option<&str>,
) -> Result<Rotation, RotateKeyError> {
    let db = Db::connect(&config.database_url()).await?;
    db.migrate(greenplate_registry::store::migrations()).await?;
    let result = match &config.secret_key {
        Some(old) => rotate_configured(&db, old, new_key).await,
        None => rotate_key_file(&db, &config.data_dir, new_key).await,
    };
    db.close().await;
    result
}

async fn rotate_configured(
    db: &Db,
    old: &str,
    new_key: Option<&str>,
) -> Result<Rotation, RotateKeyError> {
    let old = parse_key(old)?;
    let new = parse_key(new_key.ok_or(RotateKeyError::NewKeyNeeded)?)?;
    if new == old {
        return Err(RotateKeyError::SameKey);
    }
    let (old, new) = (SecretBox::new(&old), SecretBox::new(&new));
    if opens_with(db, &old).await? == Some(false) {
        return if opens_with(db, &new).await? == Some(true) {
            Ok(Rotation::AlreadyRotated)
        } else {
            Err(RotateKeyError::WrongKey)
        };
    }
    let rekeyed = rekey(db, &old, &new, "operator:rotate-key").await?;
    Ok(Rotation::Rotated {
        rekeyed,
        key_file: None,
    })
}

async fn rotate_key_file(
    db: &Db,
    dir: &Path,
    new_key: Option<&str>,
) -> Result<Rotation, RotateKeyError> {
    let (file, next) = (dir.join(KEY_FILE), dir.join(NEXT_KEY_FILE));
    let old = parse_key(&read(&file)?)?;
    if next.exists() {
        let pending = parse_key(&read(&next)?)?;
        if opens_with(db, &SecretBox::new(&pending)).await? == Some(true) {
            rename(&next, &file)?;
            return Ok(Rotation::Finished { key_file: file });
        }
        // That rotation never committed: start again.
        std::fs::remove_file(&next).map_err(|source| RotateKeyError::File {
            path: next.clone(),
            source,
        })?;
    }
    let new = match new_key {
        Some(k) => parse_key(k)?,
        None => SecretBox::generate_key(),
    };
    if new == old {
        return Err(RotateKeyError::SameKey);
    }
    let (old_box, new_box) = (SecretBox::new(&old), SecretBox::new(&new));
    if opens_with(db, &old_box).await? == Some(false) {
        return Err(RotateKeyError::WrongKey);
    }
    data_dir::write_secret_file(&next, &hex::encode(new)).map_err(|source| {
        RotateKeyError::File {
            path: next.clone(),
            source,
        }
    })?;
    match rekey(db, &old_box, &new_box, "operator:rotate-key").await {
        Ok(rekeyed) => {
            rename(&next, &file)?;
            Ok(Rotation::Rotated {
                rekeyed,
                key_file: Some(file),
            })
        }
        Err(e) => {
            // Nothing changed in the database: the old key stays in force.
            let _ = std::fs::remove_file(&next);
            Err(e.into())
        }
    }
}

fn read(path: &Path) -> Result<String, RotateKeyError> {
    std::fs::read_to_string(path).map_err(|source| RotateKeyError::File {
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), RotateKeyError> {
    std::fs::rename(from, to).map_err(|source| RotateKeyError::File {
        path: to.to_owned(),
        source,
    })?;
    if let Some(dir) = to.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
