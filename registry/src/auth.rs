//! Who is calling: bearer tokens for the admin, kiosks and patrol units.
//!
//! The admin token comes from config. Kiosk and patrol-unit tokens are issued by the server
//! (random, 256 bits), shown once, and only their SHA-256 is stored. All token hashes are
//! held in memory so the (synchronous) tonic interceptor checks a call without touching the
//! database; the interceptor puts the [`Caller`] in the request's extensions and each handler
//! says which roles it accepts with [`require`].
//!
//! Tokens have a lifecycle (issue #15, point 4): one may expire (`expires_at_ms`), and the
//! admin revokes or rotates a holder's tokens ([`Authenticator::revoke`]). What outlives
//! one call (an alert stream, a live page, a web session) keeps the [`Credential`] it was
//! opened with and ends when [`Authenticator::ended`] says so: a revocation on any node
//! reaches this one through the registry's change feed and wakes it at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::db::{Db, now_ms};
use crate::error::RegistryError;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Kiosk,
    Patrol,
    /// An insurer: reads signed claim records of thefts, nothing else.
    Insurer,
    /// A bike's owner signed in on the owner page (a code texted to the registered phone;
    /// never an API token): their own bikes only, the PIN for what needs it.
    Owner,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Kiosk => "kiosk",
            Role::Patrol => "patrol",
            Role::Insurer => "insurer",
            Role::Owner => "owner",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "kiosk" => Some(Role::Kiosk),
            "patrol" => Some(Role::Patrol),
            "insurer" => Some(Role::Insurer),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The kiosk or unit id; `admin` for the admin.
    pub id: String,
}

impl Caller {
    /// How the caller is named in the audit log, e.g. `kiosk:k-01`.
    pub fn audit_name(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.id)
    }
}

type TokenHash = [u8; 32];

fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Which token a caller proved, kept by what outlives one call (a stream, a web session)
/// to learn when that token ends. Holds the token's hash, never the token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential(TokenHash);

impl Credential {
    /// The credential of a token (whether or not it is live).
    pub fn of(token: &str) -> Self {
        Self(hash(token))
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// A live kiosk or patrol-unit token.
#[derive(Debug, Clone)]
struct Live {
    caller: Caller,
    /// Unix ms; `None`: it does not expire.
    expires_at_ms: Option<i64>,
}

impl Live {
    fn valid_at(&self, now: i64) -> bool {
        self.expires_at_ms.is_none_or(|e| now < e)
    }
}

/// The longest a token may be issued for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(400 * 86_400);

/// Checks bearer tokens.
#[derive(Debug)]
pub struct Authenticator {
    admin: TokenHash,
    tokens: RwLock<HashMap<TokenHash, Live>>,
    /// Bumped by every change made in memory ([`Authenticator::activate`]). A reload whose
    /// database read began before such a change may miss it, so it reads again.
    epoch: AtomicU64,
    /// Bumped whenever tokens may have ended (a reload, a revocation), waking
    /// [`Authenticator::ended`].
    changed: tokio::sync::watch::Sender<u64>,
}

/// How often [`Authenticator::reload`] reads again when tokens are activated meanwhile,
/// before it keeps the activated tokens on top of what it read.
const RELOAD_TRIES: usize = 4;

impl Authenticator {
    /// Loads the issued tokens from the database.
    pub async fn load(db: &Db, admin_token: &str) -> Result<Arc<Self>, RegistryError> {
        Ok(Arc::new(Self::with_tokens(
            admin_token,
            Self::load_tokens(db).await?,
        )))
    }

    fn with_tokens(admin_token: &str, tokens: HashMap<TokenHash, Live>) -> Self {
        Self {
            admin: hash(admin_token),
            tokens: RwLock::new(tokens),
            epoch: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Replaces the tokens in memory with the database's (another node issued one).
    ///
    /// A token this node issues is activated right after its commit, which may fall between
    /// this read and the replacement: the read is then stale and would drop the new token
    /// (a kiosk's first call refused as UNAUTHENTICATED). So the replacement happens only
    /// if nothing was activated meanwhile; otherwise it reads again, since what was activated
    /// had committed before. After [`RELOAD_TRIES`] it keeps this node's tokens on top.
    pub async fn reload(&self, db: &Db) -> Result<(), RegistryError> {
        for _ in 0..RELOAD_TRIES {
            let epoch = self.epoch.load(Ordering::Acquire);
            let tokens = Self::load_tokens(db).await?;
            if self.install(tokens, Some(epoch)) {
                return Ok(());
            }
        }
        let tokens = Self::load_tokens(db).await?;
        self.install(tokens, None);
        Ok(())
    }

    /// Installs `tokens` read from the database, if no token was activated since `epoch`
    /// was taken; with `None`, merges them with the tokens in memory instead. Returns whether
    /// the tokens were installed.
    fn install(&self, mut tokens: HashMap<TokenHash, Live>, epoch: Option<u64>) -> bool {
        let mut current = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let installed = match epoch {
            Some(e) if self.epoch.load(Ordering::Acquire) != e => false,
            Some(_) => {
                *current = tokens;
                true
            }
            None => {
                for (h, live) in current.drain() {
                    tokens.entry(h).or_insert(live);
                }
                *current = tokens;
                true
            }
        };
        drop(current);
        if installed {
            self.notify();
        }
        installed
    }

    async fn load_tokens(db: &Db) -> Result<HashMap<TokenHash, Live>, RegistryError> {
        let rows = sqlx::query(
            "SELECT token_hash, role, principal_id, expires_at_ms FROM api_tokens \
             WHERE revoked_at_ms IS NULL",
        )
        .fetch_all(db.pool())
        .await?;
        let mut tokens = HashMap::with_capacity(rows.len());
        for row in rows {
            let h: Vec<u8> = row.try_get("token_hash")?;
            let role: String = row.try_get("role")?;
            let (Ok(h), Some(role)) = (TokenHash::try_from(h.as_slice()), Role::parse(&role))
            else {
                tracing::warn!("Skipped a malformed api_tokens row.");
                continue;
            };
            tokens.insert(
                h,
                Live {
                    caller: Caller {
                        role,
                        id: row.try_get("principal_id")?,
                    },
                    expires_at_ms: row.try_get("expires_at_ms")?,
                },
            );
        }
        Ok(tokens)
    }

    /// The caller a token belongs to, if it is live.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        self.authenticate_held(token).map(|(caller, _)| caller)
    }

    /// The caller a token belongs to, if it is live, and the [`Credential`] to follow it by.
    pub fn authenticate_held(&self, token: &str) -> Option<(Caller, Credential)> {
        self.authenticate_credential(Credential::of(token))
    }

    /// [`Authenticator::authenticate_held`] for a token already hashed into its
    /// [`Credential`] (the web sign-in keys its rate limit by it too).
    pub fn authenticate_credential(&self, credential: Credential) -> Option<(Caller, Credential)> {
        let h = credential.0;
        if bool::from(h.ct_eq(&self.admin)) {
            let admin = Caller {
                role: Role::Admin,
                id: "admin".into(),
            };
            return Some((admin, Credential(h)));
        }
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let live = tokens.get(&h).filter(|l| l.valid_at(now_ms()))?;
        Some((live.caller.clone(), Credential(h)))
    }

    /// Whether the token behind `credential` is still live: not revoked, not expired.
    pub fn is_live(&self, credential: &Credential) -> bool {
        self.live_until(credential).is_some()
    }

    /// `None` when the token has ended; otherwise when it expires (`Some(None)`: never).
    fn live_until(&self, credential: &Credential) -> Option<Option<i64>> {
        if bool::from(credential.0.ct_eq(&self.admin)) {
            return Some(None);
        }
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&credential.0)
            .filter(|l| l.valid_at(now_ms()))
            .map(|l| l.expires_at_ms)
    }

    /// Completes once the token behind `credential` has ended (revoked here or on another
    /// node, or expired). What outlives a call selects on it and ends with the token.
    pub async fn ended(&self, credential: &Credential) {
        let mut changes = self.changed.subscribe();
        loop {
            let Some(expires) = self.live_until(credential) else {
                return;
            };
            // Wake at the expiry (at the latest a day from now, then look again).
            let wait = expires.map_or(Duration::from_secs(86_400), |e| {
                Duration::from_millis(u64::try_from(e - now_ms()).unwrap_or(0))
                    .min(Duration::from_secs(86_400))
            });
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    // The authenticator is gone with the service.
                    return std::future::pending().await;
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Issues a new token for a kiosk or a patrol unit, inside the caller's transaction,
    /// expiring after `ttl` (`None`: never). Call [`Authenticator::activate`] with the
    /// result once the transaction commits.
    pub async fn issue(
        tx: &mut sqlx::AnyConnection,
        role: Role,
        principal_id: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, RegistryError> {
        if ttl.is_some_and(|t| t > MAX_TOKEN_TTL) {
            return Err(RegistryError::invalid(
                "ttl_s",
                "a token lives at most 400 days (34560000 s)",
            ));
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("gp{}_{}", &role.as_str()[..1], hex::encode(raw));
        let h = hash(&token);
        let now = now_ms();
        let expires_at_ms = ttl.map(|t| now + i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, role, principal_id, created_at_ms, \
             expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(h.to_vec())
        .bind(role.as_str())
        .bind(principal_id)
        .bind(now)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        crate::changes::announce(tx, &crate::changes::Change::Tokens).await?;
        Ok(IssuedToken {
            token,
            hash: h,
            live: Live {
                caller: Caller {
                    role,
                    id: principal_id.to_owned(),
                },
                expires_at_ms,
            },
        })
    }

    /// Makes a committed token usable.
    pub fn activate(&self, issued: &IssuedToken) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.insert(issued.hash, issued.live.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Revokes every live token of one holder inside the caller's transaction; returns
    /// them, to pass to [`Authenticator::forget`] once the transaction commits. Other nodes
    /// learn it from the change feed.
    pub async fn revoke(
        tx: &mut sqlx::AnyConnection,
        role: Role,
        principal_id: &str,
    ) -> Result<Revoked, RegistryError> {
        let rows = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 \
             WHERE role = $2 AND principal_id = $3 AND revoked_at_ms IS NULL \
             RETURNING token_hash",
        )
        .bind(now_ms())
        .bind(role.as_str())
        .bind(principal_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in rows {
            let h: Vec<u8> = row.try_get("token_hash")?;
            if let Ok(h) = TokenHash::try_from(h.as_slice()) {
                hashes.push(h);
            }
        }
        crate::changes::announce(tx, &crate::changes::Change::Tokens).await?;
        Ok(Revoked(hashes))
    }

    /// Ends committed revocations here at once (and wakes what follows them).
    pub fn forget(&self, revoked: &Revoked) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        for h in &revoked.0 {
            tokens.remove(h);
        }
        drop(tokens);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.notify();
    }

    /// A tonic interceptor that authenticates every call or refuses it with UNAUTHENTICATED.
    pub fn interceptor(self: &Arc<Self>) -> AuthInterceptor {
        AuthInterceptor(self.clone())
    }
}

/// A token issued inside a transaction, not yet active.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    hash: TokenHash,
    live: Live,
}

impl IssuedToken {
    /// When it expires, Unix ms; `None`: never.
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.live.expires_at_ms
    }
}

/// Tokens revoked inside a transaction, not yet forgotten in memory.
#[derive(Debug)]
pub struct Revoked(Vec<TokenHash>);

impl Revoked {
    /// How many live tokens were revoked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// See [`Authenticator::interceptor`].
#[derive(Debug, Clone)]
pub struct AuthInterceptor(Arc<Authenticator>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get(greenplate_proto::AUTHORIZATION)
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be Bearer <token>"))?;
        let (caller, credential) = self
            .0
            .authenticate_held(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown, revoked or expired token"))?;
        req.extensions_mut().insert(caller);
        req.extensions_mut().insert(credential);
        Ok(req)
    }
}

/// The credential a request was authenticated with (see [`Authenticator::ended`]).
pub fn credential<T>(req: &Request<T>) -> Result<Credential, Status> {
    req.extensions()
        .get::<Credential>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("call was not authenticated"))
}

/// The authenticated caller of a request, if it has one of `roles`.
pub fn require<T>(req: &Request<T>, roles: &[Role]) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("call was not authenticated"))?;
    if roles.contains(&caller.role) {
        Ok(caller.clone())
    } else {
        Err(Status::permission_denied(format!(
            "a {} token cannot make this call",
            caller.role.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(id: &str) -> IssuedToken {
        issued_until(id, None)
    }

    fn issued_until(id: &str, expires_at_ms: Option<i64>) -> IssuedToken {
        let token = format!("gpk_{id}");
        IssuedToken {
            hash: hash(&token),
            token,
            live: Live {
                caller: Caller {
                    role: Role::Kiosk,
                    id: id.into(),
                },
                expires_at_ms,
            },
        }
    }

    /// The race CI met on PostgreSQL: the reload after LISTEN connects read the tokens just
    /// before AddKiosk committed, and replaced the map just after the token was activated.
    #[test]
    fn a_stale_reload_does_not_drop_a_token_activated_meanwhile() {
        let auth = Authenticator::with_tokens("admin", HashMap::new());
        let before = auth.epoch.load(Ordering::Acquire);
        let stale = HashMap::new(); // read before the commit
        let k = issued("k-1");
        auth.activate(&k);
        assert!(
            !auth.install(stale.clone(), Some(before)),
            "a stale read was installed"
        );
        assert_eq!(
            auth.authenticate(&k.token).map(|c| c.id),
            Some("k-1".into())
        );
        // After the retries, the merge keeps it too.
        assert!(auth.install(stale, None));
        assert_eq!(
            auth.authenticate(&k.token).map(|c| c.id),
            Some("k-1".into())
        );
    }

    #[test]
    fn a_fresh_reload_replaces_the_tokens() {
        let auth = Authenticator::with_tokens("admin", HashMap::new());
        let k = issued("k-1");
        auth.activate(&k);
        let epoch = auth.epoch.load(Ordering::Acquire);
        let mut read = HashMap::new();
        let other = issued("k-2");
        read.insert(other.hash, other.live.clone());
        assert!(auth.install(read, Some(epoch)));
        assert!(
            auth.authenticate(&k.token).is_none(),
            "not in the database any more"
        );
        assert!(auth.authenticate(&other.token).is_some());
        assert!(auth.authenticate("admin").is_some());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let auth = Authenticator::with_tokens("admin", HashMap::new());
        let past = issued_until("k-old", Some(now_ms() - 1));
        let future = issued_until("k-new", Some(now_ms() + 60_000));
        auth.activate(&past);
        auth.activate(&future);
        assert!(auth.authenticate(&past.token).is_none());
        let (_, cred) = auth.authenticate_held(&future.token).unwrap();
        assert!(auth.is_live(&cred));
    }

    #[tokio::test(start_paused = true)]
    async fn what_follows_a_token_ends_when_it_expires_or_is_revoked() {
        let auth = Arc::new(Authenticator::with_tokens("admin", HashMap::new()));
        let soon = issued_until("k-soon", Some(now_ms() + 5_000));
        let kept = issued("k-kept");
        auth.activate(&soon);
        auth.activate(&kept);
        let (_, soon_cred) = auth.authenticate_held(&soon.token).unwrap();
        let (_, kept_cred) = auth.authenticate_held(&kept.token).unwrap();
        let (_, admin_cred) = auth.authenticate_held("admin").unwrap();
        // The kept token's follower waits while the other one is revoked.
        let a = auth.clone();
        let kept_ended = tokio::spawn(async move { a.ended(&kept_cred).await });
        auth.forget(&Revoked(vec![soon.hash]));
        tokio::time::timeout(Duration::from_secs(1), auth.ended(&soon_cred))
            .await
            .expect("a revoked token's follower ends at once");
        tokio::task::yield_now().await;
        assert!(!kept_ended.is_finished());
        // Revoking it ends its follower.
        auth.forget(&Revoked(vec![kept.hash]));
        tokio::time::timeout(Duration::from_secs(1), kept_ended)
            .await
            .expect("ended on revocation")
            .unwrap();
        // The admin token from config does not end.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), auth.ended(&admin_cred))
                .await
                .is_err()
        );
    }
}
