//! Who is calling: bearer tokens for the admin, kiosks and patrol units.
//!
//! The admin token comes from config. Kiosk and patrol-unit tokens are issued by the server
//! (random, 256 bits), shown once, and only their SHA-256 is stored. All token hashes are
//! held in memory so the (synchronous) tonic interceptor checks a call without touching the
//! database; the interceptor puts the [`Caller`] in the request's extensions and each handler
//! says which roles it accepts with [`require`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Kiosk => "kiosk",
            Role::Patrol => "patrol",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "kiosk" => Some(Role::Kiosk),
            "patrol" => Some(Role::Patrol),
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

/// Checks bearer tokens.
#[derive(Debug)]
pub struct Authenticator {
    admin: TokenHash,
    tokens: RwLock<HashMap<TokenHash, Caller>>,
    /// Bumped by every change made in memory ([`Authenticator::activate`]). A reload whose
    /// database read began before such a change may miss it, so it reads again.
    epoch: AtomicU64,
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

    fn with_tokens(admin_token: &str, tokens: HashMap<TokenHash, Caller>) -> Self {
        Self {
            admin: hash(admin_token),
            tokens: RwLock::new(tokens),
            epoch: AtomicU64::new(0),
        }
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
    fn install(&self, mut tokens: HashMap<TokenHash, Caller>, epoch: Option<u64>) -> bool {
        let mut current = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        match epoch {
            Some(e) if self.epoch.load(Ordering::Acquire) != e => false,
            Some(_) => {
                *current = tokens;
                true
            }
            None => {
                for (h, caller) in current.drain() {
                    tokens.entry(h).or_insert(caller);
                }
                *current = tokens;
                true
            }
        }
    }

    async fn load_tokens(db: &Db) -> Result<HashMap<TokenHash, Caller>, RegistryError> {
        let rows = sqlx::query(
            "SELECT token_hash, role, principal_id FROM api_tokens WHERE revoked_at_ms IS NULL",
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
                Caller {
                    role,
                    id: row.try_get("principal_id")?,
                },
            );
        }
        Ok(tokens)
    }

    /// The caller a token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let h = hash(token);
        if bool::from(h.ct_eq(&self.admin)) {
            return Some(Caller {
                role: Role::Admin,
                id: "admin".into(),
            });
        }
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&h)
            .cloned()
    }

    /// Issues a new token for a kiosk or a patrol unit, inside the caller's transaction.
    /// Call [`Authenticator::activate`] with the result once the transaction commits.
    pub async fn issue(
        tx: &mut sqlx::AnyConnection,
        role: Role,
        principal_id: &str,
    ) -> Result<IssuedToken, RegistryError> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("gp{}_{}", &role.as_str()[..1], hex::encode(raw));
        let h = hash(&token);
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, role, principal_id, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(h.to_vec())
        .bind(role.as_str())
        .bind(principal_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        crate::changes::announce(tx, &crate::changes::Change::Tokens).await?;
        Ok(IssuedToken {
            token,
            hash: h,
            caller: Caller {
                role,
                id: principal_id.to_owned(),
            },
        })
    }

    /// Makes a committed token usable.
    pub fn activate(&self, issued: &IssuedToken) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.insert(issued.hash, issued.caller.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
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
    caller: Caller,
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
        let caller = self
            .0
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
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
        let token = format!("gpk_{id}");
        IssuedToken {
            hash: hash(&token),
            token,
            caller: Caller {
                role: Role::Kiosk,
                id: id.into(),
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
        read.insert(other.hash, other.caller.clone());
        assert!(auth.install(read, Some(epoch)));
        assert!(
            auth.authenticate(&k.token).is_none(),
            "not in the database any more"
        );
        assert!(auth.authenticate(&other.token).is_some());
        assert!(auth.authenticate("admin").is_some());
    }
}
