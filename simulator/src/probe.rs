//! What the simulator reads off the server from outside: its Prometheus `/metrics`, and, on
//! the same machine, its process's CPU time and memory from `/proc`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape of `/metrics`: sample (name with labels) -> value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((name, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                samples.insert(name.to_owned(), v);
            }
        }
        Self(samples)
    }

    /// A sample without labels, or the sum over a family's labelled samples; 0 if absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The values of a family by its `reason` label.
    pub fn by_reason(&self, name: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            if let Some(labels) = k.strip_prefix(name).and_then(|r| r.strip_prefix('{'))
                && let Some(reason) = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("reason=\""))
                    .and_then(|r| r.split('"').next())
            {
                *out.entry(reason.to_owned()).or_default() += v;
            }
        }
        out
    }
}

/// GETs `path` from an HTTP server (HTTP/1.0, so the body ends at close).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: greenplate\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .context("HTTP request timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, body.to_owned()))
}

/// Scrapes the server's `/metrics`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let (status, body) = http_get(addr, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(Scrape::parse(&body))
}

/// `/metrics` of `first` and of each of `more`, every sample summed over them (the nodes of
/// one deployment).
pub async fn scrape_all(first: SocketAddr, more: &[SocketAddr]) -> anyhow::Result<Scrape> {
    let mut sum = scrape(first).await?;
    for addr in more {
        for (k, v) in scrape(*addr).await?.0 {
            *sum.0.entry(k).or_default() += v;
        }
    }
    Ok(sum)
}

/// A process's CPU time and memory, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Resident set now (VmRSS), MiB.
    pub rss_mib: f64,
}

impl ProcSample {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
        let ticks: f64 = fields
            .get(11..13)
            .context("short /proc stat")?
            .iter()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .sum();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            cpu_s: ticks / clock_ticks(),
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            rss_mib: kib("VmRSS:") / 1024.0,
        })
    }

    /// [`ProcSample::read`] of `first` and each of `more`, summed (CPU time and memory of
    /// several processes together).
    pub fn read_all(first: u32, more: &[u32]) -> anyhow::Result<Self> {
        let mut sum = Self::read(first)?;
        for pid in more {
            let p = Self::read(*pid)?;
            sum.cpu_s += p.cpu_s;
            sum.peak_rss_mib += p.peak_rss_mib;
            sum.rss_mib += p.rss_mib;
        }
        Ok(sum)
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The machine's load average line (`/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The pid of the process listening on a local TCP port (from `/proc/net/tcp{,6}` and the
/// processes' open sockets), if it can be seen.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let hex_port = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|f| {
        std::fs::read_to_string(f)
            .ok()?
            .lines()
            .skip(1)
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // local_address, state 0A = LISTEN, inode.
                (cols.get(1)?.ends_with(&hex_port) && *cols.get(3)? == "0A")
                    .then(|| cols.get(9).map(|i| (*i).to_owned()))
                    .flatten()
            })
    })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        std::fs::read_dir(e.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
            .then_some(pid)
    })
}

/// The pid of a running process by its command name (e.g. `mosquitto`), if there is one.
pub fn pid_of(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (name.trim() == comm).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_reasons() {
        let s = Scrape::parse(
            "# HELP x\ngreenplate_ingest_reads_total 1234\n\
             greenplate_ingest_batches_rejected_total{reason=\"flood\"} 10\n\
             greenplate_ingest_batches_rejected_total{reason=\"bad_seal\"} 5\n",
        );
        assert_eq!(s.get("greenplate_ingest_reads_total"), 1234.0);
        assert_eq!(s.get("greenplate_ingest_batches_rejected_total"), 15.0);
        assert_eq!(
            s.by_reason("greenplate_ingest_batches_rejected_total")["flood"],
            10.0
        );
    }

    #[test]
    fn finds_who_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn reads_its_own_process() {
        let p = ProcSample::read(std::process::id()).unwrap();
        assert!(p.peak_rss_mib > 1.0 && p.peak_rss_mib >= p.rss_mib);
        assert!(p.cpu_s >= 0.0);
    }
}
