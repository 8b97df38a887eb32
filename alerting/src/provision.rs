//! Provisioning through Admin: patrol zones (GeoJSON) and patrol units with their zones and
//! tokens, and the lifecycle of kiosk and unit tokens (revoke, rotate). Each change is one
//! audited transaction, announced to the other nodes.

use std::time::Duration;

use greenplate_registry::auth::IssuedToken;
use greenplate_registry::store::{already_exists, audit};
use greenplate_registry::{Authenticator, Caller, RegistryError, Role, now_ms};
use sqlx::Row;

use crate::error::AlertingError;
use crate::state::Alerting;
use crate::zones::{Zone, ZoneKind, parse_geojson};

impl Alerting {
    /// Adds a zone from GeoJSON.
    pub async fn add_zone(
        &self,
        caller: &Caller,
        zone_id: &str,
        name: &str,
        kind: ZoneKind,
        geojson: &str,
    ) -> Result<(), AlertingError> {
        let zone_id = greenplate_registry::validate::ident("zone_id", zone_id)?;
        let name = greenplate_registry::validate::text("name", name, 200)?;
        let area = parse_geojson(geojson)?;
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO zones (zone_id, name, kind, geojson, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&zone_id)
        .bind(&name)
        .bind(kind.as_str())
        .bind(geojson)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("zone {zone_id}")))?;
        audit(&mut tx, caller, "add_zone", &zone_id).await?;
        greenplate_registry::sync::announce(&mut tx, &greenplate_registry::sync::Change::Zones)
            .await?;
        tx.commit().await?;
        self.router.zones_mut().add_zone(Zone {
            id: zone_id,
            name,
            kind,
            area,
        });
        Ok(())
    }

    /// Adds a patrol unit assigned to existing zones and returns its token.
    pub async fn add_patrol_unit(
        &self,
        caller: &Caller,
        unit_id: &str,
        name: &str,
        zone_ids: &[String],
        role: UnitRole,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AlertingError> {
        let unit_id = greenplate_registry::validate::ident("unit_id", unit_id)?;
        let name = greenplate_registry::validate::text("name", name, 200)?;
        if role == UnitRole::Canary && !zone_ids.is_empty() {
            return Err(RegistryError::invalid(
                "zone_ids",
                "must be empty for a canary unit (it gets canary alerts only)",
            )
            .into());
        }
        if let Some(missing) = {
            let zones = self.router.zones_read();
            zone_ids.iter().find(|z| !zones.has_zone(z)).cloned()
        } {
            return Err(RegistryError::NotFound(format!("zone {missing}")).into());
        }
        let mut tx = self.db().begin_write().await?;
        sqlx::query(
            "INSERT INTO patrol_units (unit_id, name, command_center, canary, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&unit_id)
        .bind(&name)
        .bind(i64::from(role == UnitRole::CommandCenter))
        .bind(i64::from(role == UnitRole::Canary))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| already_exists(e, || format!("patrol unit {unit_id}")))?;
        for zone in zone_ids {
            sqlx::query(
                "INSERT INTO unit_zones (unit_id, zone_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&unit_id)
            .bind(zone)
            .execute(&mut *tx)
            .await?;
        }
        let issued = Authenticator::issue(&mut tx, Role::Patrol, &unit_id, ttl).await?;
        audit(&mut tx, caller, "add_patrol_unit", &unit_id).await?;
        greenplate_registry::sync::announce(&mut tx, &greenplate_registry::sync::Change::Zones)
            .await?;
        tx.commit().await?;
        self.registry.auth().activate(&issued);
        let mut zones = self.router.zones_mut();
        for zone in zone_ids {
            zones.assign(&unit_id, zone);
        }
        match role {
            UnitRole::CommandCenter => zones.add_command_unit(&unit_id),
            UnitRole::Canary => zones.add_canary_unit(&unit_id),
            UnitRole::Patrol => {}
        }
        Ok(issued)
    }

    /// Revokes every live token of a kiosk or a patrol unit; returns how many. Calls with
    /// them fail at once here, and on the other nodes as soon as they read the change.
    pub async fn revoke_tokens(
        &self,
        caller: &Caller,
        role: Role,
        holder_id: &str,
        reason: &str,
    ) -> Result<usize, AlertingError> {
        let holder_id = greenplate_registry::validate::ident("holder_id", holder_id)?;
        let reason = greenplate_registry::validate::optional_text("reason", reason, 200)?;
        let mut tx = self.db().begin_write().await?;
        let revoked = Authenticator::revoke(&mut tx, role, &holder_id).await?;
        let subject = audit_subject(role, &holder_id, &reason);
        audit(&mut tx, caller, "revoke_token", &subject).await?;
        tx.commit().await?;
        self.registry.auth().forget(&revoked);
        Ok(revoked.len())
    }

    /// Issues a new token for an existing kiosk or patrol unit and revokes its live ones,
    /// in one transaction.
    pub async fn rotate_token(
        &self,
        caller: &Caller,
        role: Role,
        holder_id: &str,
        reason: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AlertingError> {
        let holder_id = greenplate_registry::validate::ident("holder_id", holder_id)?;
        let reason = greenplate_registry::validate::optional_text("reason", reason, 200)?;
        let mut tx = self.db().begin_write().await?;
        let (exists, what) = match role {
            Role::Kiosk => (
                "SELECT COUNT(*) AS n FROM kiosks WHERE kiosk_id = $1",
                "kiosk",
            ),
            Role::Patrol => (
                "SELECT COUNT(*) AS n FROM patrol_units WHERE unit_id = $1",
                "patrol unit",
            ),
            Role::Insurer => (
                "SELECT COUNT(*) AS n FROM insurers WHERE insurer_id = $1",
                "insurer",
            ),
            Role::Admin | Role::Owner => {
                return Err(RegistryError::invalid(
                    "holder",
                    "the admin token is set in the configuration; owners have no tokens",
                )
                .into());
            }
        };
        let n: i64 = sqlx::query(exists)
            .bind(&holder_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if n == 0 {
            return Err(RegistryError::NotFound(format!("{what} {holder_id}")).into());
        }
        let revoked = Authenticator::revoke(&mut tx, role, &holder_id).await?;
        let issued = Authenticator::issue(&mut tx, role, &holder_id, ttl).await?;
        let subject = audit_subject(role, &holder_id, &reason);
        audit(&mut tx, caller, "rotate_token", &subject).await?;
        tx.commit().await?;
        self.registry.auth().forget(&revoked);
        self.registry.auth().activate(&issued);
        Ok(issued)
    }
}

/// A token holder as the audit log names it, with the reason when one was given.
fn audit_subject(role: Role, holder_id: &str, reason: &str) -> String {
    let holder = match role {
        Role::Kiosk => "kiosk",
        Role::Patrol => "unit",
        Role::Insurer => "insurer",
        Role::Owner => "owner",
        Role::Admin => "admin",
    };
    if reason.is_empty() {
        format!("{holder}:{holder_id}")
    } else {
        format!("{holder}:{holder_id} ({reason})")
    }
}

/// What a unit receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitRole {
    /// The alerts of its zones (and of readers near its reported position).
    Patrol,
    /// Every alert, wherever it happens, and operators' alerts (readers offline, canaries
    /// missed).
    CommandCenter,
    /// Canary alerts only.
    Canary,
}
