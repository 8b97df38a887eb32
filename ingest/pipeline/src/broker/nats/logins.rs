//! Reader logins for nats-server (issue #16). NATS 2.9 authenticates MQTT clients from its
//! own configuration, so greenplate writes that part of it: an `authorization` block with one
//! user per enabled reader (its MQTT password as bcrypt, allowed to publish only on its own
//! two subjects, to subscribe to nothing) and this node's own user. nats-server's config
//! includes the file; after each rewrite `nats.reload_command` makes it reload.
//!
//! The readers are read from the database every `nats.logins_check_s`, so a reader added,
//! disabled or re-keyed on any node reaches the file; the file is rewritten only when what
//! it says changed (a digest of it is kept), and a reader's bcrypt hash is computed again
//! only when its password changed. The file is written whole to a temporary file and renamed
//! over the old one, readable by its owner only.
//!
//! A re-keyed reader's old secret keeps opening its batches during the grace period, but a
//! NATS user has one password: the file carries the current secret's, so a reader must log
//! in with its new secret once it is re-keyed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenplate_registry::{ReaderLogin, Registry};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::metrics::{LOGINS_READ_FAILED, LOGINS_RELOAD_FAILED, LOGINS_WRITE_FAILED, Metrics};

/// What the node itself may do on NATS: JetStream's API, acknowledgements, the lease bucket,
/// and replies to its own inbox.
const NODE_PUBLISH: &[&str] = &["$JS.API.>", "$JS.ACK.>", "$KV.>", "_INBOX.>"];
const NODE_SUBSCRIBE: &[&str] = &["_INBOX.>", "$KV.>"];

/// Why the logins could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LoginsError {
    #[error("nats.logins_file needs nats.username and nats.password (this node's own login)")]
    NoNodeUser,
    #[error("cannot read the readers: {0}")]
    Read(#[from] greenplate_registry::RegistryError),
    #[error("cannot hash a password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats.reload_command {command:?} failed: {why}")]
    Reload { command: Vec<String>, why: String },
}

impl LoginsError {
    fn reason(&self) -> &'static str {
        match self {
            LoginsError::Read(_) => LOGINS_READ_FAILED,
            LoginsError::Reload { .. } => LOGINS_RELOAD_FAILED,
            _ => LOGINS_WRITE_FAILED,
        }
    }
}

/// Keeps `nats.logins_file`: rewrites it when the readers' logins change, then runs the
/// reload command.
pub struct Logins {
    registry: Arc<Registry>,
    file: PathBuf,
    reload_command: Vec<String>,
    cost: u32,
    node: (String, String),
    metrics: Arc<Metrics>,
    /// The digest of what the file says now.
    written: Option<[u8; 32]>,
    /// Each reader's bcrypt hash, with the SHA-256 of the password it was made from.
    hashes: HashMap<String, ([u8; 32], String)>,
}

impl Logins {
    /// `None` when `config` asks for no logins file.
    pub fn new(
        config: &NatsConfig,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, LoginsError> {
        let Some(file) = config.logins_file.clone() else {
            return Ok(None);
        };
        let (Some(user), Some(password)) = (&config.username, &config.password) else {
            return Err(LoginsError::NoNodeUser);
        };
        Ok(Some(Self {
            registry,
            file,
            reload_command: config.reload_command.clone(),
            cost: config.login_bcrypt_cost.clamp(4, 31),
            node: (user.clone(), password.clone()),
            metrics,
            written: None,
            hashes: HashMap::new(),
        }))
    }

    /// Rewrites the file (and reloads nats-server) if the logins changed since it was last
    /// written. Returns whether it did.
    pub async fn refresh(&mut self) -> Result<bool, LoginsError> {
        let logins = self.registry.reader_logins().await?;
        let digest = digest(&self.node, &logins);
        if self.written == Some(digest) {
            return Ok(false);
        }
        // bcrypt is slow by design: off the async workers, and only for what changed.
        let mut hashes = std::mem::take(&mut self.hashes);
        let (cost, node_password) = (self.cost, self.node.1.clone());
        let (hashes, node_hash) = tokio::task::spawn_blocking(move || {
            let fresh = hash_all(&mut hashes, &logins, cost);
            let node = bcrypt_2a(&node_password, cost);
            (fresh.map(|()| (hashes, logins)), node)
        })
        .await
        .map_err(|e| LoginsError::Write {
            path: self.file.clone(),
            source: std::io::Error::other(e),
        })?;
        let (hashes, logins) = hashes?;
        let text = render(&self.node.0, &node_hash?, &logins, &hashes);
        self.hashes = hashes;
        write_private(&self.file, &text)
            .await
            .map_err(|source| LoginsError::Write {
                path: self.file.clone(),
                source,
            })?;
        self.written = Some(digest);
        self.metrics.nats_logins.set(logins.len() as i64);
        self.metrics.nats_logins_written.inc();
        tracing::info!(file = %self.file.display(), readers = logins.len(), "Wrote NATS reader logins.");
        self.reload().await?;
        Ok(true)
    }

    async fn reload(&self) -> Result<(), LoginsError> {
        let Some((program, args)) = self.reload_command.split_first() else {
            return Ok(());
        };
        let failed = |why: String| LoginsError::Reload {
            command: self.reload_command.clone(),
            why,
        };
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| failed("did not finish within 30 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Refreshes every `every` until `shutdown`; a failure is logged, counted by reason and
    /// tried again at the next round.
    pub async fn keep(mut self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.refresh().await {
                self.fail(&e);
            }
        }
    }

    /// Counts and logs a failed refresh (the next one tries again from scratch).
    pub fn fail(&mut self, e: &LoginsError) {
        self.metrics.nats_logins_failed(e.reason());
        if matches!(e, LoginsError::Reload { .. }) {
            // Written but not loaded: write (and reload) again next time.
            self.written = None;
        }
        tracing::error!(error = %e, "Cannot keep NATS's reader logins; trying again.");
    }
}

/// What the file says, as a digest: the node's login and each reader's id and password.
fn digest(node: &(String, String), logins: &[ReaderLogin]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (id, password) in std::iter::once((&node.0, &node.1))
        .chain(logins.iter().map(|l| (&l.reader_id, &l.password)))
    {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
        h.update(Sha256::digest(password.as_bytes()));
    }
    h.finalize().into()
}

/// Hashes the passwords that changed (or are new) into `hashes`, and forgets readers gone.
fn hash_all(
    hashes: &mut HashMap<String, ([u8; 32], String)>,
    logins: &[ReaderLogin],
    cost: u32,
) -> Result<(), bcrypt::BcryptError> {
    hashes.retain(|id, _| logins.iter().any(|l| l.reader_id == *id));
    for l in logins {
        let of: [u8; 32] = Sha256::digest(l.password.as_bytes()).into();
        if hashes.get(&l.reader_id).is_some_and(|(d, _)| *d == of) {
            continue;
        }
        hashes.insert(l.reader_id.clone(), (of, bcrypt_2a(&l.password, cost)?));
    }
    Ok(())
}

/// A bcrypt hash in the `$2a$` form nats-server recognises. Passwords over bcrypt's 72
/// bytes are refused rather than cut short.
fn bcrypt_2a(password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    Ok(bcrypt::non_truncating_hash_with_result(password, cost)?
        .format_for_version(bcrypt::Version::TwoA))
}

/// NATS's name for a reader's MQTT topic level: NATS turns `.` in a topic into `//`.
fn subject_token(reader_id: &str) -> String {
    reader_id.replace('.', "//")
}

/// A quoted string for nats-server's config.
fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// The file: an `authorization` block for nats-server's config.
fn render(
    node_user: &str,
    node_hash: &str,
    logins: &[ReaderLogin],
    hashes: &HashMap<String, ([u8; 32], String)>,
) -> String {
    let mut out = String::from(
        "# Written by greenplate (nats.logins_file): one user per enabled reader and greenplate's\n\
         # own. Do not edit: it is rewritten whenever readers are added, disabled or re-keyed.\n\
         authorization {\n  users = [\n",
    );
    out += &format!(
        "    {{ user: {}, password: {}, permissions: {{ publish: {}, subscribe: {} }} }}\n",
        quoted(node_user),
        quoted(node_hash),
        list(NODE_PUBLISH.iter().map(|s| quoted(s))),
        list(NODE_SUBSCRIBE.iter().map(|s| quoted(s))),
    );
    for l in logins {
        let Some((_, hash)) = hashes.get(&l.reader_id) else {
            continue;
        };
        let token = subject_token(&l.reader_id);
        out += &format!(
            "    {{ user: {}, password: {}, permissions: {{ publish: {}, subscribe: {{ deny: [\">\"] }} }} }}\n",
            quoted(&l.reader_id),
            quoted(hash),
            list(
                ["sightings", "status"]
                    .iter()
                    .map(|kind| quoted(&format!("greenplate.readers.{token}.{kind}")))
            ),
        );
    }
    out += "  ]\n}\n";
    out
}

/// Writes `text` to a temporary file beside `path`, readable by its owner only, and renames
/// it over `path` (nats-server never reads half a file).
async fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(&tmp).await?;
    tokio::io::AsyncWriteExt::write_all(&mut f, text.as_bytes()).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(id: &str, password: &str) -> ReaderLogin {
        ReaderLogin {
            reader_id: id.into(),
            password: password.into(),
        }
    }

    #[test]
    fn each_reader_may_publish_on_its_own_subjects_only() {
        let logins = [login("rd-1", "pw-1"), login("rd.2", "pw-2")];
        let mut hashes = HashMap::new();
        hash_all(&mut hashes, &logins, 4).unwrap();
        let text = render("greenplate", "$2a$04$node", &logins, &hashes);
        assert!(text.contains(r#"{ user: "rd-1", password: "$2a$04$"#));
        assert!(text.contains(
            r#"publish: ["greenplate.readers.rd-1.sightings", "greenplate.readers.rd-1.status"], subscribe: { deny: [">"] }"#
        ));
        // A dot in a reader id is `//` in NATS's subject for its topic.
        assert!(text.contains(r#""greenplate.readers.rd//2.sightings""#));
        assert!(!text.contains("pw-1"), "a password in clear");
        assert!(bcrypt::verify("pw-1", &hashes["rd-1"].1).unwrap());
        assert!(hashes["rd-1"].1.starts_with("$2a$04$"));
    }

    #[test]
    fn only_changed_passwords_are_hashed_again() {
        let mut hashes = HashMap::new();
        hash_all(&mut hashes, &[login("a", "1"), login("b", "2")], 4).unwrap();
        let (a, b) = (hashes["a"].1.clone(), hashes["b"].1.clone());
        hash_all(&mut hashes, &[login("a", "1"), login("b", "3")], 4).unwrap();
        assert_eq!(hashes["a"].1, a, "unchanged: same salt, not hashed again");
        assert_ne!(hashes["b"].1, b);
        assert!(bcrypt::verify("3", &hashes["b"].1).unwrap());
        hash_all(&mut hashes, &[login("b", "3")], 4).unwrap();
        assert!(!hashes.contains_key("a"), "a disabled reader is dropped");
        let node = ("n".to_owned(), "p".to_owned());
        assert_ne!(
            digest(&node, &[login("b", "3")]),
            digest(&node, &[login("b", "4")])
        );
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
