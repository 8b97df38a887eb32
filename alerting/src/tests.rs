//! Alerting's own tests, stage by stage, on a SQLite registry in a temporary directory:
//! the rules, routing, the engine's commit to the log and the hub, replay, and the incident
//! lifecycle. (The end-to-end tests in `ingest/tests` drive the same code through MQTT and
//! gRPC.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenplate_proto::v1::{AlertKind, IncidentState, Outcome};
use greenplate_registry::{
    Caller, Db, NewBike, NewOwner, Reader, Registry, RegistryError, Role, SecretBox, TagId,
    TagState, TheftDetails,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::rules::{self, Pending, Work};
use crate::{
    Alerting, AlertingError, CloneEvidence, LoggedAlert, ReaderOffline, RoutingConfig, Sighted,
    ZoneKind,
};

/// A patrol zone around (23.25, 116.55), a watch zone around (23.30, 116.60) inside a
/// second patrol zone; unit-n patrols the first, unit-s the second, cc is a command center.
const NORTH: &str = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.58,23.20],[116.58,23.28],[116.50,23.28],[116.50,23.20]]]}"#;
const SOUTH: &str = r#"{"type":"Polygon","coordinates":[[[116.58,23.28],[116.66,23.28],[116.66,23.36],[116.58,23.36],[116.58,23.28]]]}"#;
const WATCH: &str = r#"{"type":"Polygon","coordinates":[[[116.59,23.29],[116.61,23.29],[116.61,23.31],[116.59,23.31],[116.59,23.29]]]}"#;
const TAG: &str = "E28011606000020700000001";
const PLATE: &str = "潮阳A10001";

struct Fixture {
    alerting: Arc<Alerting>,
    _dir: tempfile::TempDir,
}

fn admin() -> Caller {
    Caller {
        role: Role::Admin,
        id: "admin".into(),
    }
}

fn unit(id: &str) -> Caller {
    Caller {
        role: Role::Patrol,
        id: id.into(),
    }
}

fn reader(id: &str, lat: f64, lon: f64) -> Arc<Reader> {
    Arc::new(Reader::new(id.into(), id.into(), lat, lon, "secret"))
}

impl Fixture {
    async fn new(routing: RoutingConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("a.db")))
            .await
            .unwrap();
        let registry = Registry::open(db, SecretBox::new(&[7; 32]), "admin-token")
            .await
            .unwrap();
        let alerting = Alerting::open(registry, routing).await.unwrap();
        let a = &alerting;
        a.add_zone(&admin(), "north", "North", ZoneKind::Patrol, NORTH)
            .await
            .unwrap();
        a.add_zone(&admin(), "south", "South", ZoneKind::Patrol, SOUTH)
            .await
            .unwrap();
        a.add_zone(&admin(), "exit", "Exit", ZoneKind::Watch, WATCH)
            .await
            .unwrap();
        for (id, zones, cc) in [
            ("unit-n", vec!["north".to_owned()], false),
            ("unit-s", vec!["south".to_owned()], false),
            ("cc", vec![], true),
        ] {
            a.add_patrol_unit(
                &admin(),
                id,
                id,
                &zones,
                if cc {
                    crate::UnitRole::CommandCenter
                } else {
                    crate::UnitRole::Patrol
                },
                None,
            )
            .await
            .unwrap();
        }
        Self {
            alerting,
            _dir: dir,
        }
    }

    /// Registers the bike and returns its id.
    async fn bike(&self) -> i64 {
        let kiosk = Caller {
            role: Role::Kiosk,
            id: "k1".into(),
        };
        self.alerting
            .registry()
            .register_bike(
                &kiosk,
                NewBike {
                    tag_id: TAG.into(),
                    plate: PLATE.into(),
                    owner: NewOwner {
                        name: "陈伟".into(),
                        id_number: "440513199001011230".into(),
                        phone: "13812345678".into(),
                    },
                    make: "Honda".into(),
                    model: "Wave".into(),
                    color: "red".into(),
                    frame_number: "LHJ1234".into(),
                    request_id: String::new(),
                    pin: None,
                },
            )
            .await
            .map(|r| r.bike_id)
            .unwrap_or_else(|e| panic!("registering the test bike: {e}"))
    }

    async fn report_stolen(&self) {
        self.alerting
            .registry()
            .report_stolen(&admin(), PLATE, &TheftDetails::default())
            .await
            .unwrap();
    }
}

fn sighted(bike_id: i64, state: TagState, reader: Arc<Reader>) -> Sighted {
    Sighted {
        bike_id,
        tag: TagId::parse(TAG).unwrap(),
        state,
        reader,
        seen_at_ms: greenplate_registry::now_ms(),
        clone: None,
        received_at: Instant::now(),
        hold: None,
    }
}

/// What the rules make of one piece of work: (kind, dedup key, recipients, watch zone).
async fn evaluate(a: &Alerting, work: Work) -> Vec<(AlertKind, String, Vec<String>, bool)> {
    let mut out: Vec<Pending<'_>> = Vec::new();
    let facts = rules::facts_for(a, std::slice::from_ref(&work))
        .await
        .unwrap();
    rules::evaluate(a, &facts, &work, &mut out);
    out.into_iter()
        .map(|p| {
            let watch = p.watch_zone.is_some();
            (p.base, p.dedup_key, p.recipients, watch)
        })
        .collect()
}

#[tokio::test]
async fn rules_fire_by_state_and_name_their_matter() {
    let f = Fixture::new(RoutingConfig::default()).await;
    let a = &f.alerting;
    let bike = f.bike().await;
    let rd = reader("rd-n", 23.25, 116.55);
    let plain = TagState::new(bike);

    // Nothing flagged: nothing fires.
    assert!(
        evaluate(a, Work::Sighted(sighted(bike, plain, rd.clone())))
            .await
            .is_empty()
    );
    // Stolen in the index but no open theft report (recovered since ingest looked): nothing.
    assert!(
        evaluate(
            a,
            Work::Sighted(sighted(bike, plain.with_stolen(true), rd.clone()))
        )
        .await
        .is_empty()
    );
    f.report_stolen().await;
    let report = a
        .registry()
        .open_theft_report(bike)
        .await
        .unwrap()
        .expect("an open report");
    let fired = evaluate(
        a,
        Work::Sighted(sighted(bike, plain.with_stolen(true), rd.clone())),
    )
    .await;
    assert_eq!(
        fired,
        [(
            AlertKind::StolenSighted,
            format!("theft:{report}"),
            vec!["cc".to_owned(), "unit-n".to_owned()],
            false
        )]
    );
    // Armed and not stolen; armed and stolen is the theft alone.
    let fired = evaluate(
        a,
        Work::Sighted(sighted(bike, plain.with_armed(true), rd.clone())),
    )
    .await;
    assert_eq!(fired[0].0, AlertKind::ArmedMoved);
    assert_eq!(fired[0].1, format!("armed:{bike}"));
    let fired = evaluate(
        a,
        Work::Sighted(sighted(
            bike,
            plain.with_armed(true).with_stolen(true),
            rd.clone(),
        )),
    )
    .await;
    assert_eq!(
        fired.iter().map(|f| f.0).collect::<Vec<_>>(),
        [AlertKind::StolenSighted]
    );
    // A revoked tag, and clone evidence: one sighting can fire several rules.
    let mut s = sighted(bike, plain.with_revoked(true), rd.clone());
    s.clone = Some(CloneEvidence {
        other_reader: reader("rd-far", 23.35, 116.62),
        other_seen_at_ms: s.seen_at_ms - 1000,
        distance_km: 12.0,
        speed_kmh: 43_200.0,
    });
    let fired = evaluate(a, Work::Sighted(s)).await;
    assert_eq!(
        fired
            .iter()
            .map(|f| (f.0, f.1.as_str()))
            .collect::<Vec<_>>(),
        [
            (AlertKind::RevokedTagSeen, format!("revoked:{TAG}").as_str()),
            (AlertKind::CloneSuspected, format!("clone:{TAG}").as_str()),
        ]
    );
}

#[tokio::test]
async fn routing_zones_command_centers_watch_zones_and_nearest_units() {
    let f = Fixture::new(RoutingConfig {
        nearest_units: 1,
        nearest_radius_km: 5.0,
        ..RoutingConfig::default()
    })
    .await;
    let a = &f.alerting;
    let router = a.router();
    let north = reader("rd-n", 23.25, 116.55);
    let exit = reader("rd-exit", 23.30, 116.60);
    let nowhere = reader("rd-out", 23.10, 116.40);
    assert_eq!(router.units_for(&north), ["cc", "unit-n"]);
    assert_eq!(router.units_for(&exit), ["cc", "unit-s"]);
    assert_eq!(router.units_for(&nowhere), ["cc"]);
    assert_eq!(router.route(&exit).watch_zone.as_deref(), Some("exit"));
    assert_eq!(router.route(&north).watch_zone, None);

    // unit-s, on duty 1 km from the north reader, is also sent its alerts; off duty, or
    // farther than the radius, it is not; only the nearest one counts.
    a.router()
        .update_position("unit-s", 23.259, 116.55, false)
        .unwrap();
    assert_eq!(router.units_for(&north), ["cc", "unit-n"]);
    a.router()
        .update_position("unit-s", 23.259, 116.55, true)
        .unwrap();
    assert_eq!(router.units_for(&north), ["cc", "unit-n", "unit-s"]);
    a.router()
        .update_position("unit-x", 23.251, 116.55, true)
        .unwrap();
    assert_eq!(router.units_for(&north), ["cc", "unit-n", "unit-x"]);
    a.router()
        .update_position("unit-x", 23.40, 116.70, true)
        .unwrap();
    a.router()
        .update_position("unit-s", 23.40, 116.70, true)
        .unwrap();
    assert_eq!(router.units_for(&north), ["cc", "unit-n"]);
    assert!(matches!(
        a.router().update_position("unit-s", 91.0, 116.0, true),
        Err(AlertingError::Registry(RegistryError::Invalid { .. }))
    ));

    // A new zone drops the cached routes: the reader outside every zone is now covered.
    a.add_zone(
        &admin(),
        "west",
        "West",
        ZoneKind::Patrol,
        r#"{"type":"Polygon","coordinates":[[[116.30,23.00],[116.45,23.00],[116.45,23.15],[116.30,23.15],[116.30,23.00]]]}"#,
    )
    .await
    .unwrap();
    a.add_patrol_unit(
        &admin(),
        "unit-w",
        "West",
        &["west".into()],
        crate::UnitRole::Patrol,
        None,
    )
    .await
    .unwrap();
    assert_eq!(router.units_for(&nowhere), ["cc", "unit-w"]);
}

/// The engine on its own task, with a receiver subscribed before it starts.
struct Engine {
    handle: crate::EngineHandle,
    live: tokio::sync::broadcast::Receiver<Arc<LoggedAlert>>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Engine {
    fn start(a: &Arc<Alerting>) -> Self {
        let live = a.subscribe();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handle = crate::engine::spawn(a.clone(), stop.clone(), &tracker);
        Self {
            handle,
            live,
            stop,
            tracker,
        }
    }

    async fn next(&mut self) -> Arc<LoggedAlert> {
        tokio::time::timeout(Duration::from_secs(10), self.live.recv())
            .await
            .expect("an alert reaches the hub within 10 s")
            .expect("the hub is open")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("the engine drains within 10 s");
    }
}

#[tokio::test]
async fn the_engine_commits_to_the_log_then_publishes_one_incident_per_matter() {
    let f = Fixture::new(RoutingConfig::default()).await;
    let a = &f.alerting;
    let bike = f.bike().await;
    f.report_stolen().await;
    let stolen = TagState::new(bike).with_stolen(true);
    let mut engine = Engine::start(a);
    assert_eq!(a.last_seq().await.unwrap(), 0);

    let once = sighted(bike, stolen, reader("rd-n", 23.25, 116.55));
    engine.handle.submit(once.clone()).await.unwrap();
    let first = engine.next().await;
    assert_eq!(first.alert.seq, 1);
    assert_eq!(first.alert.kind(), AlertKind::StolenSighted);
    assert_eq!(first.alert.plate, PLATE);
    assert_eq!(first.alert.priority, 1);
    assert_eq!(first.recipients, ["cc", "unit-n"]);
    // Committed before it was published: the log has it.
    assert_eq!(a.last_seq().await.unwrap(), 1);

    // The same matter seen again, now in the watch zone: an urgent update of one incident.
    engine
        .handle
        .submit(sighted(bike, stolen, reader("rd-exit", 23.30, 116.60)))
        .await
        .unwrap();
    let second = engine.next().await;
    assert_eq!(second.alert.seq, 2);
    assert_eq!(second.alert.kind(), AlertKind::WatchZone);
    assert_eq!(second.alert.priority, 2);
    assert_eq!(second.alert.zone_id, "exit");
    assert_eq!(second.alert.incident_id, first.alert.incident_id);
    assert_eq!(second.recipients, ["cc", "unit-s"]);

    // Replay: each unit gets what it was entitled to, after the seq it names.
    let seqs = |v: Vec<greenplate_proto::v1::Alert>| v.iter().map(|x| x.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(a.replay("cc", 0, u64::MAX, 100).await.unwrap()),
        [1, 2]
    );
    assert_eq!(seqs(a.replay("cc", 1, u64::MAX, 100).await.unwrap()), [2]);
    assert_eq!(
        seqs(a.replay("unit-n", 0, u64::MAX, 100).await.unwrap()),
        [1]
    );
    assert_eq!(
        seqs(a.replay("unit-s", 0, u64::MAX, 100).await.unwrap()),
        [2]
    );
    assert!(
        a.replay("unit-w", 0, u64::MAX, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let open = a.open_incidents(10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].kind, AlertKind::StolenSighted as i32);
    assert_eq!(open[0].last.seq, 2, "the incident shows its latest alert");

    // A late sighting (seen an hour ago, logged now) joins the incident but does not move
    // its position back in time.
    let mut late = sighted(bike, stolen, reader("rd-n", 23.25, 116.55));
    late.seen_at_ms -= 3_600_000;
    engine.handle.submit(late).await.unwrap();
    let late = engine.next().await;
    assert_eq!(late.alert.seq, 3);
    assert_eq!(late.alert.incident_id, first.alert.incident_id);
    let open = a.open_incidents(10).await.unwrap();
    assert_eq!(
        open[0].last.seq, 2,
        "the late sighting moved the incident back"
    );

    // The first sighting again (its batch processed twice: a node died after the commit and
    // before acknowledging it): not logged again, and no seq spent on it.
    engine.handle.submit(once).await.unwrap();

    // A reader gone offline: to command centers only, its own incident.
    engine
        .handle
        .reader_offline(ReaderOffline {
            reader: reader("rd-n", 23.25, 116.55),
            last_seen_ms: 1_700_000_000_000,
            why: "silent",
            detected_at: Instant::now(),
        })
        .await
        .unwrap();
    let offline = engine.next().await;
    assert_eq!(offline.alert.kind(), AlertKind::ReaderOffline);
    assert_eq!(offline.alert.seq, 4, "the repeated sighting took a seq");
    assert_eq!(a.duplicates_dropped.get(), 1);
    assert_eq!(a.replay("cc", 0, u64::MAX, 100).await.unwrap().len(), 4);
    assert_eq!(offline.alert.seen_at_ms, 1_700_000_000_000);
    assert_eq!(offline.recipients, ["cc"]);
    assert_ne!(offline.alert.incident_id, first.alert.incident_id);
    engine.stop().await;
}

#[tokio::test]
async fn incidents_acknowledge_resolve_and_who_may() {
    let f = Fixture::new(RoutingConfig::default()).await;
    let a = &f.alerting;
    let bike = f.bike().await;
    f.report_stolen().await;
    let mut engine = Engine::start(a);
    engine
        .handle
        .submit(sighted(
            bike,
            TagState::new(bike).with_stolen(true),
            reader("rd-n", 23.25, 116.55),
        ))
        .await
        .unwrap();
    let incident = engine.next().await.alert.incident_id.clone();
    engine.stop().await;

    // unit-s was not sent an alert of it: the incident does not exist for it.
    assert!(matches!(
        a.acknowledge(&unit("unit-s"), &incident, "").await,
        Err(AlertingError::Registry(RegistryError::NotFound(_)))
    ));
    let acked = a
        .acknowledge(&unit("unit-n"), &incident, "on my way")
        .await
        .unwrap();
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "patrol:unit-n");
    assert_eq!(acked.plate, PLATE);
    // Acknowledging again is fine (the first one stays).
    let again = a.acknowledge(&unit("cc"), &incident, "").await.unwrap();
    assert_eq!(again.acknowledged_by, "patrol:unit-n");

    assert!(matches!(
        a.resolve(&unit("unit-n"), &incident, Outcome::Unspecified, "")
            .await,
        Err(AlertingError::Registry(RegistryError::Invalid { .. }))
    ));
    let resolved = a
        .resolve(&unit("unit-n"), &incident, Outcome::Recovered, "found it")
        .await
        .unwrap();
    assert_eq!(resolved.state(), IncidentState::Resolved);
    assert_eq!(resolved.outcome(), Outcome::Recovered);
    // Recovered takes the bike off the hotlist.
    assert_eq!(a.registry().open_theft_report(bike).await.unwrap(), None);
    assert!(matches!(
        a.resolve(&unit("unit-n"), &incident, Outcome::FalseAlarm, "")
            .await,
        Err(AlertingError::Registry(RegistryError::FailedPrecondition(
            _
        )))
    ));
    assert!(matches!(
        a.acknowledge(&unit("unit-n"), &incident, "").await,
        Err(AlertingError::Registry(RegistryError::FailedPrecondition(
            _
        )))
    ));
    assert!(a.open_incidents(10).await.unwrap().is_empty());
    let changes = a.incident_changes(0, 10).await.unwrap();
    assert_eq!(changes, [(incident, "resolved".to_owned())]);
}

#[tokio::test]
async fn a_reader_offline_incident_has_no_bike_and_can_be_acknowledged_and_resolved() {
    let f = Fixture::new(RoutingConfig::default()).await;
    let a = &f.alerting;
    let mut engine = Engine::start(a);
    let offline = |at| ReaderOffline {
        reader: reader("rd-n", 23.25, 116.55),
        last_seen_ms: at,
        why: "silent",
        detected_at: Instant::now(),
    };
    engine
        .handle
        .reader_offline(offline(1_700_000_000_000))
        .await
        .unwrap();
    let alert = engine.next().await;
    assert_eq!(alert.alert.kind(), AlertKind::ReaderOffline);
    let incident = alert.alert.incident_id.clone();

    // Only command centers were sent it: a zone unit may not act on it.
    assert!(matches!(
        a.acknowledge(&unit("unit-n"), &incident, "").await,
        Err(AlertingError::Registry(RegistryError::NotFound(_)))
    ));
    let acked = a
        .acknowledge(&unit("cc"), &incident, "sending a technician")
        .await
        .unwrap();
    assert_eq!(acked.incident_id, incident);
    assert_eq!(acked.kind, AlertKind::ReaderOffline as i32);
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "patrol:cc");
    assert_eq!(acked.plate, "", "a reader's incident has no bike");
    let open = a.open_incidents(10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert!(open[0].acknowledged);

    let resolved = a
        .resolve(&unit("cc"), &incident, Outcome::FalseAlarm, "power back")
        .await
        .unwrap();
    assert_eq!(resolved.state(), IncidentState::Resolved);
    assert_eq!(resolved.outcome(), Outcome::FalseAlarm);
    assert_eq!(resolved.resolved_by, "patrol:cc");
    assert_eq!(resolved.note, "power back");
    assert_eq!(resolved.plate, "");
    assert!(a.open_incidents(10).await.unwrap().is_empty());
    assert!(matches!(
        a.resolve(&admin(), &incident, Outcome::FalseAlarm, "")
            .await,
        Err(AlertingError::Registry(RegistryError::FailedPrecondition(
            _
        )))
    ));

    // The same reader going offline again is a new matter.
    engine
        .handle
        .reader_offline(offline(1_700_000_100_000))
        .await
        .unwrap();
    let again = engine.next().await;
    assert_eq!(again.alert.kind(), AlertKind::ReaderOffline);
    assert_ne!(again.alert.incident_id, incident);
    let by_admin = a
        .resolve(&admin(), &again.alert.incident_id, Outcome::LostTrack, "")
        .await
        .unwrap();
    assert_eq!(by_admin.state(), IncidentState::Resolved);
    engine.stop().await;
}

/// Escalation on an injected clock: an urgent incident nobody acknowledged is sent again,
/// one priority higher, to its zone's units and command centers, once, with a step in its
/// history; an acknowledged one is not.
#[tokio::test]
async fn an_urgent_incident_nobody_acknowledged_is_escalated_once() {
    use crate::escalation::EscalationRule;
    use crate::incidents::IncidentKey;

    let f = Fixture::new(RoutingConfig::default()).await;
    let a = &f.alerting;
    let bike = f.bike().await;
    f.report_stolen().await;
    let stolen = TagState::new(bike).with_stolen(true);
    let mut engine = Engine::start(a);
    engine
        .handle
        .submit(sighted(bike, stolen, reader("rd-exit", 23.30, 116.60)))
        .await
        .unwrap();
    let urgent = engine.next().await;
    assert_eq!(
        (urgent.alert.kind(), urgent.alert.priority),
        (AlertKind::WatchZone, 2)
    );
    engine
        .handle
        .reader_offline(ReaderOffline {
            reader: reader("rd-n", 23.25, 116.55),
            last_seen_ms: 1_700_000_000_000,
            why: "silent",
            detected_at: Instant::now(),
        })
        .await
        .unwrap();
    let offline = engine.next().await;
    a.acknowledge(&unit("cc"), &offline.alert.incident_id, "on it")
        .await
        .unwrap();
    // Reader-offline incidents after 10 s (acknowledged: not escalated), then the defaults.
    let mut rules = vec![EscalationRule {
        kinds: vec![AlertKind::ReaderOffline],
        min_priority: 1,
        after_ms: 10_000,
    }];
    rules.extend(EscalationRule::defaults());

    let now = greenplate_registry::now_ms();
    assert_eq!(a.escalate_due(&rules, now + 59_000).await.unwrap(), 0);
    assert_eq!(a.escalate_due(&rules, now + 61_000).await.unwrap(), 1);
    let raised = engine.next().await;
    assert_eq!(raised.alert.escalation, 1);
    assert_eq!(raised.alert.priority, 3);
    assert_eq!(raised.alert.kind(), AlertKind::WatchZone);
    assert_eq!(raised.alert.incident_id, urgent.alert.incident_id);
    assert_eq!(raised.alert.reader_id, "rd-exit");
    assert_ne!(raised.alert.alert_id, urgent.alert.alert_id);
    assert_eq!(raised.recipients, ["cc", "unit-s"]);
    // Once per incident.
    assert_eq!(a.escalate_due(&rules, now + 600_000).await.unwrap(), 0);
    assert_eq!(a.escalations.get(), 1);
    let detail = a
        .incident_detail(
            &unit("cc"),
            &IncidentKey::Id(urgent.alert.incident_id.clone()),
            "",
        )
        .await
        .unwrap();
    let step = detail
        .events
        .iter()
        .find(|e| e.action == "escalate")
        .expect("an escalate step");
    assert!(
        step.note.starts_with("not acknowledged within 60 s"),
        "{}",
        step.note
    );
    engine.stop().await;
}
