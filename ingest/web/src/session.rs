//! Web page sessions: a random id in an HttpOnly, SameSite=Strict cookie names a session held
//! here, in memory, with the caller its token proved and a CSRF token that every form
//! carries back. A session unused for the idle time is gone; signing out removes it at once.
//!
//! The token a user signs in with is checked once (by the registry's [`Authenticator`]) and
//! never stored or logged: the session keeps only the [`Caller`] it proved and the
//! [`Credential`] to follow the token by, so a session ends when its token is revoked or
//! expires (the extractor checks it on every request; live feeds wait on it).
//!
//! One token holds at most [`MAX_PER_TOKEN`] sessions: signing in again with it ends its
//! own oldest session, never another token's.
//!
//! [`Authenticator`]: greenplate_registry::Authenticator

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use greenplate_registry::{Caller, Credential};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// Which web application a session belongs to; a session of one is no use in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Kiosk,
    Command,
    /// The owner page: signed in with a code texted to the bike's registered phone.
    Owner,
}

impl Area {
    /// The cookie that carries this area's session id.
    pub fn cookie_name(self) -> &'static str {
        match self {
            Area::Kiosk => "gp_kiosk",
            Area::Command => "gp_command",
            Area::Owner => "gp_owner",
        }
    }

    /// The URL path the cookie is sent to.
    pub fn path(self) -> &'static str {
        match self {
            Area::Kiosk => "/kiosk",
            Area::Command => "/command",
            Area::Owner => "/owner",
        }
    }
}

/// Sessions one token may hold at once.
pub const MAX_PER_TOKEN: usize = 8;

/// What a handler learns about a signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub caller: Caller,
    /// The token it was opened with (its hash).
    pub credential: Credential,
    /// The token every form of this session must carry.
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    area: Area,
    caller: Caller,
    credential: Credential,
    csrf: String,
    last_used: Instant,
}

/// The sessions of all signed-in users.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    max: usize,
    map: Mutex<HashMap<String, Entry>>,
    /// Live feeds open per session id.
    feeds: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

/// One live feed's place among its session's [`crate::limits::FEEDS_PER_SESSION`], given
/// back when the feed ends.
#[derive(Debug)]
pub struct FeedSlot {
    feeds: std::sync::Arc<Mutex<HashMap<String, usize>>>,
    session: String,
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = feeds.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                feeds.remove(&self.session);
            }
        }
    }
}

/// 128 random bits, hex.
fn random_token() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

impl Sessions {
    /// Sessions unused for `idle` expire; at most `max` live at once (the oldest unused
    /// goes first), so sign-ins cannot exhaust memory.
    pub fn new(idle: Duration, max: usize) -> Self {
        Self {
            idle,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
            feeds: Default::default(),
        }
    }

    /// A place for one more live feed of session `id`, unless it holds `max` already.
    pub fn open_feed(&self, id: &str, max: usize) -> Option<FeedSlot> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let n = feeds.entry(id.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(FeedSlot {
            feeds: self.feeds.clone(),
            session: id.to_owned(),
        })
    }

    /// How long an unused session lives.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for a caller whose token was just checked. A token that holds
    /// [`MAX_PER_TOKEN`] sessions loses its own least recently used one.
    pub fn create(
        &self,
        area: Area,
        caller: Caller,
        credential: Credential,
        now: Instant,
    ) -> Session {
        let mut map = self.map();
        let idle = self.idle;
        map.retain(|_, e| now.saturating_duration_since(e.last_used) < idle);
        loop {
            let own: Vec<(&String, Instant)> = map
                .iter()
                .filter(|(_, e)| e.credential == credential)
                .map(|(k, e)| (k, e.last_used))
                .collect();
            if own.len() < MAX_PER_TOKEN {
                break;
            }
            let Some(oldest) = own
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        while map.len() >= self.max {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        let session = Session {
            id: random_token(),
            caller,
            credential,
            csrf: random_token(),
        };
        map.insert(
            session.id.clone(),
            Entry {
                area,
                caller: session.caller.clone(),
                credential: session.credential.clone(),
                csrf: session.csrf.clone(),
                last_used: now,
            },
        );
        session
    }

    /// The live session with this id in `area`, marked used at `now`; an expired one is
    /// removed and not returned.
    pub fn get(&self, area: Area, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map();
        let entry = map.get_mut(id)?;
        if now.saturating_duration_since(entry.last_used) >= self.idle {
            map.remove(id);
            return None;
        }
        if entry.area != area {
            return None;
        }
        entry.last_used = entry.last_used.max(now);
        Some(Session {
            id: id.to_owned(),
            caller: entry.caller.clone(),
            credential: entry.credential.clone(),
            csrf: entry.csrf.clone(),
        })
    }

    /// True while the session lives, without marking it used (for a live feed, which is
    /// not the user doing anything).
    pub fn alive(&self, id: &str, now: Instant) -> bool {
        self.map()
            .get(id)
            .is_some_and(|e| now.saturating_duration_since(e.last_used) < self.idle)
    }

    /// Ends a session (sign-out).
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// The session named by the request's cookie for `area`.
    pub fn from_headers(&self, area: Area, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let id = cookie(headers, area.cookie_name())?;
        self.get(area, id, now)
    }
}

impl Session {
    /// Constant-time check of a form's CSRF token.
    pub fn csrf_ok(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value carrying a session id for `area`: a browser-session cookie (no
/// Max-Age), since the server ends the session after the idle time anyway. `Secure` when
/// the port speaks TLS (`secure`), so the browser never sends it in clear.
pub fn set_cookie(area: Area, id: &str, secure: bool) -> String {
    format!(
        "{}={id}; Path={}; HttpOnly; SameSite=Strict{}",
        area.cookie_name(),
        area.path(),
        if secure { "; Secure" } else { "" },
    )
}

/// A `Set-Cookie` value that deletes the session cookie of `area`.
pub fn clear_cookie(area: Area) -> String {
    format!(
        "{}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict",
        area.cookie_name(),
        area.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use greenplate_registry::Role;

    fn kiosk() -> Caller {
        Caller {
            role: Role::Kiosk,
            id: "k-1".into(),
        }
    }

    fn credential(token: &str) -> Credential {
        Credential::of(token)
    }

    #[test]
    fn a_session_lives_while_used_and_expires_when_idle() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let s = sessions.create(Area::Kiosk, kiosk(), credential("t"), t0);
        assert_eq!(s.id.len(), 32);
        assert_ne!(s.id, s.csrf);
        // Used at 50 s: the idle clock restarts.
        let got = sessions.get(Area::Kiosk, &s.id, t0 + Duration::from_secs(50));
        assert_eq!(got.as_ref(), Some(&s));
        assert!(
            sessions
                .get(Area::Kiosk, &s.id, t0 + Duration::from_secs(109))
                .is_some()
        );
        // 60 s unused after that: gone, and stays gone.
        assert!(
            sessions
                .get(Area::Kiosk, &s.id, t0 + Duration::from_secs(169))
                .is_none()
        );
        assert!(
            sessions
                .get(Area::Kiosk, &s.id, t0 + Duration::from_secs(110))
                .is_none()
        );
    }

    #[test]
    fn alive_does_not_extend_a_session() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let s = sessions.create(Area::Command, kiosk(), credential("t"), t0);
        assert!(sessions.alive(&s.id, t0 + Duration::from_secs(59)));
        assert!(!sessions.alive(&s.id, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn sessions_are_per_area_and_sign_out_ends_them() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        let s = sessions.create(Area::Kiosk, kiosk(), credential("t"), now);
        assert!(sessions.get(Area::Command, &s.id, now).is_none());
        assert!(sessions.get(Area::Kiosk, "not-a-session", now).is_none());
        sessions.remove(&s.id);
        assert!(sessions.get(Area::Kiosk, &s.id, now).is_none());
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let a = sessions.create(Area::Kiosk, kiosk(), credential("t"), t0);
        let b = sessions.create(
            Area::Kiosk,
            kiosk(),
            credential("t"),
            t0 + Duration::from_secs(1),
        );
        let c = sessions.create(
            Area::Kiosk,
            kiosk(),
            credential("t"),
            t0 + Duration::from_secs(2),
        );
        let now = t0 + Duration::from_secs(3);
        assert!(
            sessions.get(Area::Kiosk, &a.id, now).is_none(),
            "oldest dropped"
        );
        assert!(sessions.get(Area::Kiosk, &b.id, now).is_some());
        assert!(sessions.get(Area::Kiosk, &c.id, now).is_some());
    }

    #[test]
    fn one_tokens_sign_ins_end_only_its_own_sessions() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let other = sessions.create(Area::Kiosk, kiosk(), credential("other"), t0);
        let mut mine = Vec::new();
        for k in 0..(MAX_PER_TOKEN as u64 + 3) {
            let at = t0 + Duration::from_millis(10 * (k + 1));
            mine.push(sessions.create(Area::Kiosk, kiosk(), credential("mine"), at));
        }
        let now = t0 + Duration::from_secs(1);
        assert!(sessions.get(Area::Kiosk, &other.id, now).is_some());
        let live = mine.iter().filter(|s| sessions.alive(&s.id, now)).count();
        assert_eq!(live, MAX_PER_TOKEN);
        // The newest ones are the ones kept.
        assert!(sessions.alive(&mine.last().unwrap().id, now));
        assert!(!sessions.alive(&mine[0].id, now));
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_feeds() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let a = sessions.open_feed("s", 2).unwrap();
        let _b = sessions.open_feed("s", 2).unwrap();
        assert!(sessions.open_feed("s", 2).is_none());
        assert!(sessions.open_feed("other", 2).is_some());
        drop(a);
        assert!(sessions.open_feed("s", 2).is_some());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let s = sessions.create(Area::Kiosk, kiosk(), credential("t"), Instant::now());
        let other = sessions.create(Area::Kiosk, kiosk(), credential("t"), Instant::now());
        assert!(s.csrf_ok(&s.csrf));
        assert!(!s.csrf_ok(""));
        assert!(!s.csrf_ok(&other.csrf));
        assert!(!s.csrf_ok(&s.csrf[..31]));
        assert!(!s.csrf_ok(&format!("{}0", s.csrf)));
    }

    #[test]
    fn cookies_are_found_and_set_strictly() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; gp_kiosk=abc ; b=2"));
        h.append(COOKIE, HeaderValue::from_static("gp_command=xyz"));
        assert_eq!(cookie(&h, "gp_kiosk"), Some("abc"));
        assert_eq!(cookie(&h, "gp_command"), Some("xyz"));
        assert_eq!(cookie(&h, "gp"), None);
        assert!(set_cookie(Area::Kiosk, "abc", true).ends_with("; Secure"));
        let set = set_cookie(Area::Kiosk, "abc", false);
        assert!(!set.contains("Secure"));
        for part in ["gp_kiosk=abc", "Path=/kiosk", "HttpOnly", "SameSite=Strict"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(clear_cookie(Area::Command).contains("Max-Age=0"));
    }
}
