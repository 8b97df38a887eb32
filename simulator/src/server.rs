//! Spawns a `greenplate` binary for a run: a fresh data directory, free ports (the embedded
//! broker too: the machine's Mosquitto holds 1883), the district's registrations bulk
//! imported first (`greenplate registry import`), then `greenplate serve` until `/readyz`
//! answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::district::Target;
use crate::probe;

/// What to start.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `greenplate` binary (a release build for measurements).
    pub binary: PathBuf,
    /// Registrations to bulk import before it starts: `town::tag_id(run, i)`, i < bikes.
    pub bikes: usize,
    pub run: u64,
    /// An external broker (`mqtt://HOST:PORT`) instead of the embedded one.
    pub mqtt_url: Option<String>,
    /// The embedded broker's `mqtt.buffer_mib` (default: the server's).
    pub mqtt_buffer_mib: Option<usize>,
    /// More TOML appended to the generated config (e.g. an `[ingest]` table).
    pub extra_toml: String,
    /// Top-level keys put before the generated config's tables (e.g. `database_url`,
    /// `secret_key`).
    pub top_toml: String,
    /// Where readers connect when it is neither the server nor `mqtt_url` (NATS's MQTT
    /// listener, with `[nats]` in `extra_toml`).
    pub readers_mqtt: Option<SocketAddr>,
}

/// A running `greenplate` child process; stopped (SIGTERM) by [`SpawnedServer::stop`] and
/// killed if dropped.
pub struct SpawnedServer {
    child: tokio::process::Child,
    pub pid: u32,
    pub grpc_url: String,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub admin_token: String,
    pub import_seconds: f64,
    pub dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<std::net::TcpListener> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
}

impl SpawnedServer {
    pub async fn start(spec: &ServerSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            spec.binary.exists(),
            "{} not found (cargo build --release --bin greenplate)",
            spec.binary.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("greenplate-sim-")
            .tempdir()?;
        // Hold all three at once so they differ; released just before the server binds.
        let (a, b, c) = (free_port()?, free_port()?, free_port()?);
        let (mqtt, grpc, http) = (a.local_addr()?, b.local_addr()?, c.local_addr()?);
        let admin_token = hex::encode(rand::random::<[u8; 16]>());
        let nonce = hex::encode(rand::random::<[u8; 4]>());
        let mut toml = format!(
            "data_dir = {:?}\nadmin_token = {admin_token:?}\n{}\n[mqtt]\nlisten = \"{mqtt}\"\n",
            dir.path().display().to_string(),
            spec.top_toml
        );
        if let Some(mib) = spec.mqtt_buffer_mib {
            toml.push_str(&format!("buffer_mib = {mib}\n"));
        }
        if let Some(url) = &spec.mqtt_url {
            toml.push_str(&format!(
                "url = {url:?}\nclient_id = \"gp-sim-{nonce}\"\nshare_group = \"gp-sim-{nonce}\"\n"
            ));
        }
        toml.push_str(&format!(
            "\n[grpc]\nlisten = \"{grpc}\"\n\n[http]\nlisten = \"{http}\"\n\n{}",
            spec.extra_toml
        ));
        let config = dir.path().join("greenplate.toml");
        std::fs::write(&config, toml)?;

        let started = Instant::now();
        if spec.bikes > 0 {
            let csv = dir.path().join("registrations.csv");
            crate::town::write_import_csv(&csv, spec.bikes as u64, spec.run)?;
            let out = tokio::process::Command::new(&spec.binary)
                .args(["registry", "import"])
                .arg(&csv)
                .arg("--config")
                .arg(&config)
                .output()
                .await
                .context("running greenplate registry import")?;
            if !out.status.success() {
                bail!(
                    "greenplate registry import failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let import_seconds = started.elapsed().as_secs_f64();

        let log = std::fs::File::create(dir.path().join("server.log"))?;
        drop((a, b, c));
        let child = tokio::process::Command::new(&spec.binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting greenplate serve")?;
        let pid = child.id().context("greenplate exited at once")?;
        // Readers connect to the external broker when there is one.
        let mqtt = match &spec.mqtt_url {
            Some(url) => {
                use std::net::ToSocketAddrs;
                let hostport = url.trim_start_matches("mqtt://");
                let hostport = if hostport.contains(':') {
                    hostport.to_owned()
                } else {
                    format!("{hostport}:1883")
                };
                hostport
                    .to_socket_addrs()?
                    .next()
                    .with_context(|| format!("cannot resolve {url}"))?
            }
            None => spec.readers_mqtt.unwrap_or(mqtt),
        };
        let mut server = Self {
            child,
            pid,
            grpc_url: format!("http://{grpc}"),
            mqtt,
            http,
            admin_token,
            import_seconds,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, _)) = probe::http_get(http, "/readyz").await {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("greenplate exited ({status}):\n{}", server.log_tail());
            }
            if Instant::now() > deadline {
                bail!("greenplate not ready within 120 s:\n{}", server.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Its log's warnings and errors: how many of each message, most frequent first.
    pub fn log_warnings(&self) -> Vec<(usize, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for line in text.lines() {
            let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            // The level, the target and the message, without the timestamp and fields.
            let rest = &line[at..];
            let msg = rest.split("  ").next().unwrap_or(rest);
            let key: String = msg.chars().take(160).collect();
            *counts.entry(key).or_default() += 1;
        }
        let mut v: Vec<(usize, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
        v.sort_by_key(|w| std::cmp::Reverse(w.0));
        v.truncate(5);
        v
    }

    /// Where a district run finds it.
    pub fn target(&self) -> Target {
        let (mqtt_host, mqtt_port) = (self.mqtt.ip().to_string(), self.mqtt.port());
        Target {
            grpc_url: Some(self.grpc_url.clone()),
            admin_token: self.admin_token.clone(),
            mqtt_host,
            mqtt_port,
            metrics: Some(self.http),
            server_pid: Some(self.pid),
            topic_prefix: None,
            relay_counter: None,
            broker_pid: None,
            more_nodes: Vec::new(),
        }
    }

    /// SIGTERM, then waits for it to drain (killed after 20 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}
