//! Issue #15, point 3: TLS on the gRPC and HTTP ports from certificate files (made here
//! with rcgen), plain text refused there; the session cookie is `Secure`; MQTT over TLS to
//! the embedded broker and from ingest to an external one.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use greenplate_ingest::config::TlsConfig;
use greenplate_proto::v1::AddKioskRequest;
use greenplate_simulator::clients;
use support::{ADMIN_TOKEN, TestService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A self-signed certificate for `localhost` and 127.0.0.1, written to `dir`; returns the
/// config pointing at it and the certificate's PEM.
fn certificate(dir: &std::path::Path) -> (TlsConfig, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let config = TlsConfig {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    std::fs::write(&config.cert_file, &cert_pem).unwrap();
    std::fs::write(&config.key_file, cert.key_pair.serialize_pem()).unwrap();
    (config, cert_pem)
}

/// A TLS client trusting `ca_pem` only.
fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.0 request over TLS; the whole response.
async fn https(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    request: &str,
) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // A server may close without close_notify after an HTTP/1.0 response.
    let _ = tls.read_to_end(&mut got).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_speak_tls_from_certificate_files() {
    let certs = tempfile::tempdir().unwrap();
    let (tls, ca) = certificate(certs.path());
    let svc = TestService::start_configured(move |c| c.tls = Some(tls.clone())).await;
    let grpc = svc.service.grpc_addr;
    let http = svc.service.http_addr;

    // gRPC over TLS, checked against the CA: a kiosk is added.
    let channel = Channel::from_shared(format!("https://localhost:{}", grpc.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let kiosk = clients::admin(channel, ADMIN_TOKEN)
        .unwrap()
        .add_kiosk(AddKioskRequest {
            kiosk_id: "k-tls".into(),
            name: "TLS kiosk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Plain-text gRPC to the same port gets nowhere.
    let plain = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => clients::admin(ch, ADMIN_TOKEN)
            .unwrap()
            .list_readers(greenplate_proto::v1::ListReadersRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "plain-text gRPC was answered on the TLS port");

    // HTTPS: health, and a sign-in whose cookie is Secure.
    let connector = tls_connector(&ca);
    let health = https(
        &connector,
        http,
        "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"));
    let body = format!("token={}", kiosk.token);
    let signed_in = https(
        &connector,
        http,
        &format!(
            "POST /kiosk/login HTTP/1.0\r\nHost: localhost\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let cookie = signed_in
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {signed_in}"));
    assert!(cookie.contains("; Secure"), "{cookie}");

    // Plain HTTP to the TLS port: no answer, and the failed handshake is counted.
    let mut plain = tokio::net::TcpStream::connect(http).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("200"));
    let metrics = https(
        &connector,
        http,
        "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let handshakes = support::sample_value(
        metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b),
        "greenplate_http_connections_closed_total{reason=\"tls_handshake\"}",
    );
    assert_eq!(handshakes, Some(1.0), "{metrics}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_stops_the_start() {
    let certs = tempfile::tempdir().unwrap();
    let (mut tls, _) = certificate(certs.path());
    std::fs::write(&tls.key_file, "not a key").unwrap();
    tls.cert_file = certs.path().join("cert.pem");
    let mut config = greenplate_ingest::Config {
        data_dir: tempfile::tempdir().unwrap().keep(),
        tls: Some(tls),
        ..Default::default()
    };
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let Err(err) = greenplate_ingest::Service::start(config).await else {
        panic!("started with a key file that is no key");
    };
    assert!(err.to_string().contains("private key"), "{err}");
}

/// The service's PostgreSQL connections use TLS when the URL says `sslmode=require`
/// (the machine's PostgreSQL has ssl on, with its own certificate), and alerts still reach
/// patrol streams through the log follower's LISTEN connection over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG) with ssl on"]
async fn postgres_connections_use_tls_with_sslmode_require() {
    let pg = greenplate_registry::testing::PgTestDb::create().await;
    let url = format!("{}?sslmode=require", pg.url);
    let db_name = pg.url.rsplit('/').next().unwrap().to_owned();
    let svc = TestService::start_configured(move |c| c.database_url = Some(url.clone())).await;
    let secret = svc.add_reader("rd-ssl", 23.3, 116.6).await;
    let hq = svc.add_unit("hq-ssl", &[], true).await;
    let tag = "E28011606000000000000D01";
    support::register_stolen(&svc, tag, "粤D7D001").await;
    let mut alerts = support::stream(&hq, 0).await;
    let mut reader = greenplate_simulator::reader::ReaderClient::connect(
        "127.0.0.1",
        svc.mqtt_port(),
        "rd-ssl",
        &secret,
    )
    .await
    .unwrap();
    reader
        .publish(vec![greenplate_simulator::reader::sighting(tag, 2, -50)])
        .await
        .unwrap();
    let alert = support::next_alert(&mut alerts).await;
    assert_eq!(alert.tag_id, tag);

    let probe = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let (with_tls, without): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(&db_name)
    .fetch_one(&probe)
    .await
    .unwrap();
    assert!(with_tls > 0, "no TLS connection of the service");
    assert_eq!(without, 0, "a plain connection of the service");
    probe.close().await;
    svc.stop().await;
    pg.drop_db().await;
}

/// Readers connect to the embedded broker over TLS (`mqtt.tls` with `[tls]`): a stolen
/// bike's sighting sealed and sent over MQTTS alerts; plain MQTT to that port gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_speak_mqtt_over_tls_to_the_embedded_broker() {
    let certs = tempfile::tempdir().unwrap();
    let (tls, ca) = certificate(certs.path());
    let svc = TestService::start_configured(move |c| {
        c.tls = Some(tls.clone());
        c.mqtt.tls = true;
    })
    .await;
    let tag = "E28011606000000000000B01";
    let secret = svc.add_reader("rd-tls", 23.30, 116.60).await;
    support::register_stolen(&svc, tag, "粤D7B001").await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = support::stream(&hq, 0).await;
    a_sighting_over_tls_alerts(svc.mqtt_port(), "rd-tls", &secret, &ca, tag, &mut alerts).await;
    // Plain MQTT to the TLS listener: no CONNACK.
    let plain = greenplate_simulator::reader::ReaderClient::connect(
        "127.0.0.1",
        svc.mqtt_port(),
        "rd-tls",
        &secret,
    )
    .await;
    assert!(
        plain.is_err(),
        "a plain-text reader connected to the TLS listener"
    );
    svc.stop().await;
}

/// A private Mosquitto speaking MQTT over TLS only, on a free port; killed when dropped.
struct TlsMosquitto {
    _child: tokio::process::Child,
    port: u16,
}

async fn tls_mosquitto(dir: &std::path::Path, tls: &TlsConfig) -> TlsMosquitto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous true\n\
             persistence false\nuser root\nlog_type error\n",
            tls.cert_file.display(),
            tls.key_file.display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(
        std::env::var("MOSQUITTO").unwrap_or_else(|_| "mosquitto".into()),
    )
    .arg("-c")
    .arg(&conf)
    .kill_on_drop(true)
    .spawn()
    .expect("mosquitto (the broker's binary) is needed: set MOSQUITTO or install it");
    greenplate_registry::testing::eventually(
        "mosquitto listening",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    TlsMosquitto {
        _child: child,
        port,
    }
}

/// Ingest's client of an external broker over TLS (`mqtts://` and `mqtt.ca_file`): readers
/// publish to a Mosquitto that speaks TLS only, and their stolen-bike sightings alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto (the mosquitto binary)"]
async fn ingest_reads_an_external_broker_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (tls, ca) = certificate(certs.path());
    let broker = tls_mosquitto(certs.path(), &tls).await;
    let run = hex::encode(rand::random::<[u8; 4]>());
    let (url, group, ca_file) = (
        format!("mqtts://localhost:{}", broker.port),
        format!("gp-tls-{run}"),
        tls.cert_file.clone(),
    );
    let svc = TestService::start_configured(move |c| {
        c.mqtt.url = Some(url.clone());
        c.mqtt.share_group = group.clone();
        c.mqtt.ca_file = Some(ca_file.clone());
    })
    .await;
    let tag = "E28011606000000000000B02";
    let reader_id = format!("rd-{run}");
    let secret = svc.add_reader(&reader_id, 23.30, 116.60).await;
    support::register_stolen(&svc, tag, "粤D7B002").await;
    let hq = svc.add_unit("hq", &[], true).await;
    let mut alerts = support::stream(&hq, 0).await;
    a_sighting_over_tls_alerts(broker.port, &reader_id, &secret, &ca, tag, &mut alerts).await;
    svc.stop().await;

    // Without the CA file, an mqtts:// broker is refused at the start, saying why.
    let url = format!("mqtts://localhost:{}", broker.port);
    let mut config = greenplate_ingest::Config {
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..Default::default()
    };
    config.mqtt.url = Some(url);
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let Err(err) = greenplate_ingest::Service::start(config).await else {
        panic!("started against an mqtts:// broker with no CA to check it by");
    };
    assert!(err.to_string().contains("mqtt.ca_file"), "{err}");
}

/// A reader connects over TLS (trusting `ca`) to `port`, sends one sighting of `tag`, and
/// the alert names that reader and tag.
async fn a_sighting_over_tls_alerts(
    port: u16,
    reader_id: &str,
    secret: &str,
    ca: &str,
    tag: &str,
    alerts: &mut tonic::Streaming<greenplate_proto::v1::Alert>,
) {
    let mut reader = greenplate_simulator::reader::ReaderClient::connect_tls(
        "localhost",
        port,
        reader_id,
        secret,
        ca.as_bytes(),
    )
    .await
    .unwrap();
    reader
        .publish(vec![greenplate_simulator::reader::sighting(tag, 2, -50)])
        .await
        .unwrap();
    let alert = support::next_alert(alerts).await;
    assert_eq!(
        (alert.reader_id.as_str(), alert.tag_id.as_str()),
        (reader_id, tag)
    );
    reader.disconnect().await;
}
