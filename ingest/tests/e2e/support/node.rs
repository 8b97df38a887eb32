//! A `greenplate serve` process on ephemeral ports, for tests that signal or kill it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use greenplate_registry::testing::eventually;
use greenplate_simulator::clients;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::ADMIN_TOKEN;

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `greenplate serve` process.
pub struct Node {
    child: Child,
    pub mqtt: SocketAddr,
    pub grpc: String,
    pub http: SocketAddr,
}

impl Node {
    /// Starts on `dir` with the embedded broker and waits until it is ready.
    pub async fn start(dir: &Path) -> Node {
        Self::start_with(dir, None).await
    }

    /// Starts on `dir` with a configuration file (flags override it: the data directory and
    /// the ports) and waits until it is ready.
    pub async fn start_with(dir: &Path, config: Option<&Path>) -> Node {
        let (mqtt, grpc, http) = (free_port(), free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_greenplate"));
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("--data-dir")
            .arg(dir)
            .args(["--mqtt-listen", &mqtt.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .env("GREENPLATE_ADMIN_TOKEN", ADMIN_TOKEN)
            // Tests stamp sightings into the future to make separate passes (`later`).
            .env("GREENPLATE_INGEST__MAX_FUTURE_SKEW_MS", "86400000")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let node = Node {
            child,
            mqtt,
            grpc: format!("http://{grpc}"),
            http,
        };
        eventually(
            "node ready (/readyz 200)",
            Duration::from_secs(30),
            || async {
                match http_status(node.http, "/readyz").await {
                    Some(200) => Ok(()),
                    other => Err(other),
                }
            },
        )
        .await;
        node
    }

    pub async fn channel(&self) -> Channel {
        clients::channel(&self.grpc).await.unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit(mut self, within: Duration) -> ExitStatus {
        eventually("node exited", within, || {
            let status = self.child.try_wait().unwrap();
            async move { status.ok_or("still running") }
        })
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split(' ').nth(1)?.parse().ok()
}
