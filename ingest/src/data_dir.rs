//! The data directory: the generated secrets a node keeps beside its SQLite database (the
//! admin token, the at-rest key), written once with mode 0600 and synced, and the marker of
//! an interrupted key rotation.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The data directory's key file.
pub const KEY_FILE: &str = "secret.key";
/// Where earlier versions kept the Ed25519 key that signs insurance claim records; now it is
/// in the database, shared by every node, and this file (if there) only seeds it once.
pub const CLAIMS_KEY_FILE: &str = "claims.key";
/// The SQLite database (when no `database_url` is configured).
pub const DATABASE_FILE: &str = "greenplate.db";
/// The new key while a rotation is under way.
pub const NEXT_KEY_FILE: &str = "secret.key.next";

/// Creates the data directory (mode 0700) if it is missing.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the SQLite database at `db` readable by its owner only (0600): creates it empty
/// that way if it is missing (SQLite then gives its WAL and shared-memory files the same
/// mode), and narrows an existing one and those files. It holds owners' names, 90 days of
/// where their bikes were, and PIN hashes.
pub fn restrict_database(db: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(db)?);
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Reads a one-line secret file, or creates it (mode 0600) with `make()`.
pub fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => return Ok(s.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let value = make();
    write_secret_file(path, &value)?;
    tracing::info!(path = %path.display(), "Generated a secret file.");
    Ok(value)
}

/// Writes a new one-line secret file (mode 0600; it must not exist) and syncs it to disk.
pub fn write_secret_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    writeln!(f, "{value}")?;
    f.sync_all()
}

/// Refuses to start on a data directory whose key rotation was interrupted.
pub fn check_no_interrupted_rotation(dir: &Path) -> Result<(), PathBuf> {
    let next = dir.join(NEXT_KEY_FILE);
    if next.exists() { Err(next) } else { Ok(()) }
}
