//! `greenplate zones import`: the zones of a GeoJSON FeatureCollection, added through the
//! running service's Admin API, feature by feature.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use greenplate_ingest::zones_import::{Outcome, import};

use crate::Usage;

#[derive(clap::Subcommand)]
pub enum ZonesCommand {
    /// Add the zones of a GeoJSON FeatureCollection through the running service (each
    /// feature: properties.id, optional name, optional kind patrol|watch).
    Import {
        file: PathBuf,
        /// greenplate gRPC URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// Admin token.
        #[arg(long, env = "GREENPLATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
}

pub async fn run(command: ZonesCommand) -> anyhow::Result<ExitCode> {
    let ZonesCommand::Import {
        file,
        server,
        admin_token,
    } = command;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let channel = tonic::transport::Endpoint::from_shared(server)
        .map_err(|e| Usage(e.to_string()))?
        .connect_lazy();
    let bearer =
        greenplate_proto::auth::Bearer::new(&admin_token).map_err(|e| Usage(e.to_string()))?;
    let mut client =
        greenplate_proto::v1::admin_client::AdminClient::with_interceptor(channel, bearer);
    let outcomes = import(&mut client, &text)
        .await
        .with_context(|| file.display().to_string())?;
    let mut rejected = 0;
    for o in &outcomes {
        match o {
            Outcome::Added(id) => println!("added {id}"),
            Outcome::AlreadyThere(id) => println!("already there {id}"),
            Outcome::Rejected { feature, reason } => {
                rejected += 1;
                println!("feature {feature} rejected: {reason}");
            }
        }
    }
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
