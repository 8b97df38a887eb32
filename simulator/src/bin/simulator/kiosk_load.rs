//! `simulator kiosk-load`: RegisterBike calls/s through gRPC, each kiosk with its own token
//! and connection.

use std::path::PathBuf;
use std::time::Instant;

use greenplate_simulator::clients;
use greenplate_simulator::reader::now_ms;
use greenplate_simulator::town;

use crate::args::admin_token;

#[derive(clap::Args)]
pub struct KioskLoadArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Admin token (or use --admin-token-file).
    #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, default_value = "greenplate-data/admin-token")]
    admin_token_file: PathBuf,
    /// Concurrent kiosks, each with its own token and connection.
    #[arg(long, default_value_t = 16)]
    kiosks: usize,
    /// Registrations in all.
    #[arg(long, default_value_t = 2000)]
    bikes: usize,
}

pub async fn run(args: KioskLoadArgs) -> anyhow::Result<()> {
    use greenplate_proto::v1::{AddKioskRequest, BikeDetails, Owner, RegisterBikeRequest};
    anyhow::ensure!(args.kiosks >= 1, "--kiosks must be at least 1");
    let token = admin_token(args.admin_token, &args.admin_token_file)?;
    let channel = clients::channel(&args.grpc).await?;
    let mut admin = clients::admin(channel.clone(), &token)?;
    let run = (now_ms() / 1000 % 4000) as u64;
    let mut kiosks = Vec::new();
    for k in 0..args.kiosks {
        let token = admin
            .add_kiosk(AddKioskRequest {
                kiosk_id: format!("load{run}-k{k}"),
                name: format!("Load kiosk {k}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .token;
        // Each kiosk has its own HTTP/2 connection, as separate kiosks would.
        kiosks.push(clients::registry(
            clients::channel(&args.grpc).await?,
            &token,
        )?);
    }
    let per = args.bikes.div_ceil(args.kiosks);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut client) in kiosks.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per);
            for j in 0..per {
                let i = (k * per + j) as u64;
                let t = Instant::now();
                client
                    .register_bike(RegisterBikeRequest {
                        tag_id: town::tag_id(run, i),
                        plate: town::plate(run, i),
                        owner: Some(Owner {
                            name: format!("车主{i}"),
                            id_number: town::resident_id(run, i),
                            phone: format!("139{:08}", i % 100_000_000),
                        }),
                        bike: Some(BikeDetails {
                            make: "Yadea".into(),
                            model: "G5".into(),
                            color: "green".into(),
                            frame_number: format!("LOAD{run:04}{i:08}"),
                        }),
                        request_id: format!("load{run}-{i}"),
                        pin: town::PIN.into(),
                    })
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{} registrations by {} kiosks in {secs:.2} s: {:.0} calls/s; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        args.kiosks,
        latencies.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
