//! Issue #16, first step: NATS JetStream as the source of reader messages. Each test starts
//! its own nats-server (JetStream, and its MQTT listener for the readers) on free ports with
//! a temporary store; readers speak MQTT to NATS with the same sealed batches as anywhere.

use std::time::Duration;

use async_nats::jetstream;
use greenplate_registry::testing::eventually;
use greenplate_simulator::reader::{ReaderClient, sighting};

use crate::support::{self, SHARED_KEY, TestService};
use greenplate_proto::v1::{ListReadersRequest, SetReaderEnabledRequest};

/// A private nats-server with JetStream and MQTT on free ports; killed when dropped.
pub(crate) struct Nats {
    child: tokio::process::Child,
    _store: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) mqtt_port: u16,
}

impl Nats {
    /// The command that makes this nats-server reload its configuration.
    fn reload_command(&self) -> Vec<String> {
        vec![
            std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
            "--signal".into(),
            format!("reload={}", self.child.id().expect("nats-server running")),
        ]
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// `N` distinct free ports: each is held by a listener until all are bound, so none is
/// handed out twice (a port freed at once can be the next one the kernel gives).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

async fn nats_server() -> Nats {
    nats_server_with("").await
}

/// The subject mapping that puts each reader's subjects into one of `n` partitions.
pub(crate) fn partition_mapping(n: u32) -> String {
    format!(
        "mappings = {{ \"greenplate.readers.*.*\": \"greenplate.part.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\" }}\n"
    )
}

pub(crate) async fn nats_server_with(extra: &str) -> Nats {
    let [port, mqtt_port] = free_ports();
    spawn_nats(&format!("gp-test-{port}"), port, mqtt_port, extra).await
}

pub(crate) async fn spawn_nats(name: &str, port: u16, mqtt_port: u16, extra: &str) -> Nats {
    let store = tempfile::tempdir().unwrap();
    let conf = store.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
             jetstream {{ store_dir: {:?} }}\n\
             mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n{extra}",
            store.path().join("js")
        ),
    )
    .unwrap();
    // Its log goes to a file, shown if it does not come up.
    let log = store.path().join("nats.log");
    let mut child = tokio::process::Command::new(
        std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
    )
    .arg("-c")
    .arg(&conf)
    .kill_on_drop(true)
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .expect("start nats-server (Debian's nats-server package)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for port in [port, mqtt_port] {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!(
                    "nats-server {name} not listening on {port} ({}):\n{}",
                    exited.map_or("still running".into(), |s| s.to_string()),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Nats {
        child,
        _store: store,
        port,
        mqtt_port,
    }
}

fn through(nats: &Nats, ack_wait_s: u64) -> impl Fn(&mut greenplate_ingest::Config) {
    let url = nats.url();
    move |c| {
        c.nats.url = Some(url.clone());
        c.nats.ack_wait_s = ack_wait_s;
    }
}

/// Waits until the stream holds no message (work-queue retention: an acknowledged message
/// leaves the stream).
async fn all_acknowledged(js: &jetstream::Context) {
    eventually(
        "every message acknowledged",
        Duration::from_secs(10),
        || async {
            let left = js
                .get_stream("GREENPLATE_READERS")
                .await
                .map_err(|e| e.to_string())?
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages;
            match left {
                0 => Ok(()),
                n => Err(format!("{n} messages left in the stream")),
            }
        },
    )
    .await;
}

/// A stolen bike's sealed sighting, published over MQTT to NATS, alerts a patrol unit, and
/// every message the reader sent is acknowledged to JetStream (none left in the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (NATS_SERVER, default nats-server on PATH)"]
async fn a_sighting_through_nats_jetstream_alerts_and_is_acknowledged() {
    let nats = nats_server().await;
    let svc = TestService::start_configured(through(&nats, 30)).await;
    let tag = "E28011606000000000000E01";
    let secret = svc.add_reader("rd-nats", 23.30, 116.60).await;
    support::register_stolen(&svc, tag, "粤D7E001").await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = support::stream(&hq, 0).await;

    let mut reader = ReaderClient::connect("127.0.0.1", nats.mqtt_port, "rd-nats", &secret)
        .await
        .unwrap();
    reader.publish(vec![sighting(tag, 2, -50)]).await.unwrap();
    let alert = support::next_alert(&mut alerts).await;
    assert_eq!(alert.tag_id, tag);
    assert_eq!(alert.reader_id, "rd-nats");

    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    all_acknowledged(&js).await;
    svc.wait_metric("greenplate_ingest_batches_accepted_total", 1.0)
        .await;
    svc.stop().await;
}

/// A node that took a message and died before acknowledging it: JetStream hands the
/// message to the next node once the ack-wait has passed, and its stolen sighting alerts.
/// The dead node is played by this test, pulling from the durable consumer and dropping
/// what it got unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (NATS_SERVER, default nats-server on PATH)"]
async fn a_message_a_dead_node_held_is_redelivered_to_a_live_one() {
    let nats = nats_server().await;
    let tag = "E28011606000000000000E02";
    // Provision with a node up, then stop it: the stream and the durable consumer stay.
    let first = TestService::start_configured(through(&nats, 1)).await;
    let secret = first.add_reader("rd-nats", 23.30, 116.60).await;
    support::register_stolen(&first, tag, "粤D7E002").await;
    let hq_token = support::new_unit_token(first.channel().await, "hq", &[], true).await;
    let dir = first.stop().await;

    let mut reader = ReaderClient::connect("127.0.0.1", nats.mqtt_port, "rd-nats", &secret)
        .await
        .unwrap();
    reader.publish(vec![sighting(tag, 2, -50)]).await.unwrap();

    // The node that dies: takes the sighting (and the reader's status) and never acks.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("GREENPLATE_READERS")
        .await
        .unwrap()
        .get_consumer("greenplate-ingest")
        .await
        .unwrap();
    let mut held_sighting = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !held_sighting {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sighting never reached the stream"
        );
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        use futures::StreamExt;
        while let Some(m) = batch.next().await {
            held_sighting |= m.unwrap().subject.ends_with(".sightings");
        }
    }

    // The live node, on the same registry: gets the message once the ack-wait passed.
    let live = TestService::start_in_configured(dir, through(&nats, 1)).await;
    let hq = greenplate_simulator::clients::patrol(live.channel().await, &hq_token).unwrap();
    let mut alerts = support::stream(&hq, 0).await;
    let alert = support::next_alert(&mut alerts).await;
    assert_eq!(alert.tag_id, tag);
    all_acknowledged(&js).await;
    live.stop().await;
}

/// The batches a node accepted per reader (ListReaders, from that node's memory).
async fn batches_per_reader(svc: &TestService) -> std::collections::BTreeMap<String, u64> {
    svc.admin()
        .await
        .list_readers(ListReadersRequest {})
        .await
        .unwrap()
        .into_inner()
        .readers
        .into_iter()
        .map(|r| (r.reader_id, r.batches_accepted))
        .collect()
}

/// Per-reader affinity (`nats.partitions`): two nodes on one PostgreSQL share 8 partitions
/// of the readers' subjects, 4 each; each reader's batches all go to the node holding its
/// partition (each node's per-reader count says so), and both take part. When one node
/// stops, the other takes its partitions and every later stolen-bike sighting still alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and PostgreSQL (GREENPLATE_TEST_PG)"]
async fn each_reader_goes_to_one_node_at_a_time_and_a_leaving_node_hands_over() {
    let nats = nats_server_with(&partition_mapping(8)).await;
    let url = nats.url();
    let partitioned = move |c: &mut greenplate_ingest::Config| {
        c.nats.url = Some(url.clone());
        c.nats.partitions = 8;
        c.nats.lease_s = 3;
        c.nats.ack_wait_s = 5;
        c.secret_key = Some(SHARED_KEY.into());
    };
    let a = TestService::start_postgres_configured(partitioned.clone()).await;
    let db = a.database_url.clone();
    let on_b = partitioned.clone();
    let b = TestService::start_configured(move |c| {
        on_b(c);
        c.database_url = db.clone();
    })
    .await;
    for svc in [&a, &b] {
        svc.wait_metric("greenplate_nats_partitions_owned", 4.0)
            .await;
    }
    eventually("4 partitions each", Duration::from_secs(15), || async {
        let (on_a, on_b) = (
            a.metric("greenplate_nats_partitions_owned").await,
            b.metric("greenplate_nats_partitions_owned").await,
        );
        if (on_a, on_b) == (4.0, 4.0) {
            Ok(())
        } else {
            Err(format!("a {on_a}, b {on_b}"))
        }
    })
    .await;

    const READERS: usize = 12;
    const BATCHES: usize = 6;
    let mut readers = Vec::new();
    for r in 0..READERS {
        let id = format!("rd-aff-{r}");
        let secret = a.add_reader(&id, 23.30, 116.60).await;
        readers.push(
            ReaderClient::connect("127.0.0.1", nats.mqtt_port, &id, &secret)
                .await
                .unwrap(),
        );
    }
    for round in 0..BATCHES {
        for (r, reader) in readers.iter_mut().enumerate() {
            let tag = format!("E2801160600000000{r:03}{round:04}");
            reader.publish(vec![sighting(&tag, 2, -50)]).await.unwrap();
        }
    }
    let total = (READERS * BATCHES) as f64;
    eventually(
        "every batch taken once",
        Duration::from_secs(20),
        || async {
            let n = a.metric("greenplate_ingest_batches_accepted_total").await
                + b.metric("greenplate_ingest_batches_accepted_total").await;
            if n == total {
                Ok(())
            } else {
                Err(format!("{n} of {total}"))
            }
        },
    )
    .await;
    // Each node counts the batches it accepted per reader (ListReaders, from its memory):
    // every reader's 6 went to one node, and both nodes took some readers.
    let (on_a, on_b) = (batches_per_reader(&a).await, batches_per_reader(&b).await);
    for r in 0..READERS {
        let id = format!("rd-aff-{r}");
        let (x, y) = (on_a[&id], on_b[&id]);
        assert!(
            (x, y) == (BATCHES as u64, 0) || (x, y) == (0, BATCHES as u64),
            "{id}: {x} batches on a, {y} on b: split between nodes"
        );
    }
    let readers_on_a = on_a.values().filter(|&&n| n > 0).count();
    assert!(
        (1..READERS).contains(&readers_on_a),
        "one node took every reader ({readers_on_a} of {READERS} on a)"
    );

    // B leaves: A holds all 8 partitions, and a stolen bike seen by every reader alerts.
    b.stop().await;
    a.wait_metric("greenplate_nats_partitions_owned", 8.0).await;
    let tag = "E28011606000000000000E03";
    support::register_stolen(&a, tag, "粤D7E003").await;
    let hq = a.add_unit("hq", &[], true).await;
    let mut alerts = support::stream(&hq, 0).await;
    for reader in readers.iter_mut() {
        reader.publish(vec![sighting(tag, 2, -50)]).await.unwrap();
    }
    let mut from = std::collections::BTreeSet::new();
    while from.len() < READERS {
        let alert = support::next_alert(&mut alerts).await;
        assert_eq!(alert.tag_id, tag);
        from.insert(alert.reader_id);
    }
    a.stop().await;
}

/// greenplate writes the reader logins nats-server checks (`nats.logins_file`) and makes it
/// reload them: a reader added through the admin API logs in to NATS's MQTT listener with
/// its secret, may not publish on another reader's topic (NATS refuses it: it never reaches
/// ingest), and once disabled can no longer log in. greenplate's own user is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (NATS_SERVER, default nats-server on PATH)"]
async fn nats_checks_the_reader_logins_greenplate_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greenplate-logins.conf");
    // Before greenplate writes it: greenplate's own user alone, its password in clear.
    std::fs::write(
        &file,
        "authorization { users = [ { user: greenplate, password: node-pass } ] }\n",
    )
    .unwrap();
    // nats-server 2.9 resolves an include relative to its config file's directory (even an
    // absolute path); both temporary directories are in the same one.
    let relative = format!(
        "../{}/greenplate-logins.conf",
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    let nats = nats_server_with(&format!("include {relative:?}\n")).await;
    let (url, reload, logins) = (nats.url(), nats.reload_command(), file.clone());
    let svc = TestService::start_configured(move |c| {
        c.nats.url = Some(url.clone());
        c.nats.username = Some("greenplate".into());
        c.nats.password = Some("node-pass".into());
        c.nats.logins_file = Some(logins.clone());
        c.nats.reload_command = reload.clone();
        c.nats.logins_check_s = 1;
    })
    .await;
    svc.wait_metric("greenplate_nats_logins_written_total", 1.0)
        .await;
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(!written.contains("node-pass"), "a password in clear");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the logins file is readable by others");
    }

    let tag = "E28011606000000000000E21";
    let secret = svc.add_reader("rd-login", 23.30, 116.60).await;
    let other = svc.add_reader("rd-other", 23.31, 116.61).await;
    support::register_stolen(&svc, tag, "粤D7E021").await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = support::stream(&hq, 0).await;
    // The readers are in the file (and nats-server has reloaded it) within a few seconds.
    let port = nats.mqtt_port;
    let mut reader = eventually("rd-login logs in to NATS", Duration::from_secs(20), || {
        let secret = secret.clone();
        async move { ReaderClient::connect("127.0.0.1", port, "rd-login", &secret).await }
    })
    .await;
    assert!(
        ReaderClient::connect("127.0.0.1", port, "rd-login", &other)
            .await
            .is_err(),
        "NATS took a wrong password"
    );
    // rd-other, logged in as itself, publishes on rd-login's topic: refused by NATS.
    let mut spoof = ReaderClient::connect("127.0.0.1", port, "rd-other", &other)
        .await
        .unwrap();
    spoof.set_sightings_topic(reader.sightings_topic().to_owned());
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        spoof.publish(vec![sighting(tag, 2, -50)]),
    )
    .await;
    // rd-login's own batch, after it on the same topic, alerts; the spoof never reached
    // ingest (it would be counted as not opening under rd-login's key).
    reader
        .publish(vec![support::later(sighting(tag, 2, -50), 1)])
        .await
        .unwrap();
    let alert = support::next_alert(&mut alerts).await;
    assert_eq!(alert.reader_id, "rd-login");
    for reason in ["unsealed", "reader_mismatch", "replay"] {
        let sample = format!("greenplate_ingest_batches_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(svc.metric_or_zero(&sample).await, 0.0, "{reason}");
    }

    // Disabled: rewritten, reloaded, and rd-login can no longer log in.
    let before = svc.metric("greenplate_nats_logins_written_total").await;
    svc.admin()
        .await
        .set_reader_enabled(SetReaderEnabledRequest {
            reader_id: "rd-login".into(),
            enabled: false,
        })
        .await
        .unwrap();
    svc.wait_metric("greenplate_nats_logins_written_total", before + 1.0)
        .await;
    eventually("rd-login refused by NATS", Duration::from_secs(10), || {
        let secret = secret.clone();
        async move {
            match ReaderClient::connect("127.0.0.1", port, "rd-login", &secret).await {
                Ok(c) => {
                    c.disconnect().await;
                    Err("still logs in")
                }
                Err(_) => Ok(()),
            }
        }
    })
    .await;
    assert_eq!(svc.metric("greenplate_nats_logins").await, 1.0);
    for reason in ["read", "write", "reload"] {
        let sample = format!("greenplate_nats_logins_failed_total{{reason=\"{reason}\"}}");
        assert_eq!(svc.metric_or_zero(&sample).await, 0.0, "{reason}");
    }
    reader.disconnect().await;
    spoof.disconnect().await;
    svc.stop().await;
}
