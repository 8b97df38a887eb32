//! [`WebState`]: what every web handler shares: alerting (and through it the registry), the
//! sign-in sessions, ingest's totals for the rates, the shutdown signal, the map tiles.

use std::sync::Arc;
use std::time::Duration;

use greenplate_alerting::Alerting;
use greenplate_registry::Authenticator;
use tokio_util::sync::CancellationToken;

use crate::limits::{SignInLimits, WebMetrics};
use crate::session::Sessions;

/// Sessions alive at once, at most (kiosks and command centers together).
const MAX_SESSIONS: usize = 10_000;

/// Ingest's totals so far, what the command center's rates are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestTotals {
    /// Tag reads in accepted sightings.
    pub reads: u64,
    /// Batches accepted.
    pub batches: u64,
    /// Sightings accepted.
    pub sightings: u64,
    /// Reader messages rejected, every reason.
    pub rejected: u64,
}

/// Reads [`IngestTotals`] (the composing crate hands ingest's metrics in).
pub type Totals = Arc<dyn Fn() -> IngestTotals + Send + Sync>;

/// What the web handlers share.
#[derive(Clone)]
pub struct WebState {
    pub(crate) alerting: Arc<Alerting>,
    pub(crate) totals: Totals,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tile_url: Option<Arc<str>>,
    pub(crate) metrics: WebMetrics,
    pub(crate) sign_in_limits: Arc<SignInLimits>,
    /// The port speaks TLS: cookies are `Secure`.
    pub(crate) secure: bool,
    /// The SMS gateway that texts owners their sign-in codes; none: no owner sign-in.
    pub(crate) owner_sms: Option<OwnerSms>,
    pub(crate) owner_codes: Arc<crate::owner_codes::Codes>,
    /// Claim records for owners; none: the owner page offers none.
    pub(crate) claims: Option<greenplate_alerting::claims::Claims>,
}

/// How the owner page texts codes.
#[derive(Clone)]
pub struct OwnerSms {
    pub(crate) gateway: Arc<greenplate_alerting::forward::sms::Gateway>,
    pub(crate) client: reqwest::Client,
    pub(crate) timeout: Duration,
}

impl OwnerSms {
    pub fn new(
        gateway: Arc<greenplate_alerting::forward::sms::Gateway>,
        timeout: Duration,
    ) -> Self {
        Self {
            gateway,
            client: reqwest::Client::new(),
            timeout,
        }
    }
}

impl WebState {
    /// `session_idle`: how long an unused session lives; `tile_url`: optional map tiles.
    pub fn new(
        alerting: Arc<Alerting>,
        totals: Totals,
        shutdown: CancellationToken,
        session_idle: Duration,
        tile_url: Option<String>,
        metrics: WebMetrics,
        secure: bool,
    ) -> Self {
        Self {
            alerting,
            totals,
            sessions: Arc::new(Sessions::new(session_idle, MAX_SESSIONS)),
            shutdown,
            tile_url: tile_url.filter(|t| !t.trim().is_empty()).map(Into::into),
            metrics,
            sign_in_limits: Arc::new(SignInLimits::default()),
            secure,
            owner_sms: None,
            owner_codes: Arc::default(),
            claims: None,
        }
    }

    /// Owners sign in with codes texted through this gateway.
    pub fn with_owner_sms(mut self, sms: OwnerSms) -> Self {
        self.owner_sms = Some(sms);
        self
    }

    /// Owners get the signed claim records of their own unresolved thefts.
    pub fn with_claims(mut self, claims: greenplate_alerting::claims::Claims) -> Self {
        self.claims = Some(claims);
        self
    }

    pub(crate) fn auth(&self) -> &Arc<Authenticator> {
        self.alerting.registry().auth()
    }
}
