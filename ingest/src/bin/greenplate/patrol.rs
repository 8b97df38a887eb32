//! `greenplate patrol`: the officers' client. Prints a unit's alerts as they arrive (resuming
//! after a dropped connection), or acknowledges or resolves an incident.

use std::process::ExitCode;

use greenplate_ingest::patrol_client as pc;
use greenplate_proto::v1::Outcome;

use crate::Usage;

#[derive(clap::Args)]
pub struct PatrolArgs {
    /// greenplate gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The patrol unit's token.
    #[arg(long, env = "GREENPLATE_TOKEN", hide_env_values = true)]
    token: String,
    /// Print alerts after this seq (0: everything this unit was sent).
    #[arg(long, default_value_t = 0)]
    resume_after: u64,
    /// Ring the terminal bell for each alert and colour it by priority (critical red,
    /// urgent yellow): auto does so when printing to a terminal and NO_COLOR is not set.
    #[arg(long, value_enum, default_value_t = AlarmArg::Auto)]
    alarm: AlarmArg,
    #[command(subcommand)]
    action: Option<PatrolAction>,
}

#[derive(clap::Subcommand)]
enum PatrolAction {
    /// Take an incident on.
    Ack {
        incident_id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Close an incident.
    Resolve {
        incident_id: String,
        /// recovered (takes the bike off the hotlist), false-alarm or lost-track.
        #[arg(long)]
        outcome: OutcomeArg,
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AlarmArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutcomeArg {
    Recovered,
    FalseAlarm,
    LostTrack,
}

pub async fn run(args: PatrolArgs) -> anyhow::Result<ExitCode> {
    let mut client = pc::connect(&args.server, &args.token)
        .await
        .map_err(|e| Usage(e.to_string()))?;
    match args.action {
        None => {
            use std::io::IsTerminal;
            let alarm = match args.alarm {
                AlarmArg::Auto => pc::Alarm::for_terminal(std::io::stdout().is_terminal()),
                AlarmArg::Always => pc::Alarm {
                    colour: true,
                    bell: true,
                },
                AlarmArg::Never => pc::Alarm::default(),
            };
            pc::print_alerts(
                &mut client,
                args.resume_after,
                &mut std::io::stdout(),
                alarm,
            )
            .await?;
        }
        Some(PatrolAction::Ack { incident_id, note }) => {
            let i = pc::acknowledge(&mut client, &incident_id, &note).await?;
            println!("{} {}", i.incident_id, i.state().as_str_name());
        }
        Some(PatrolAction::Resolve {
            incident_id,
            outcome,
            note,
        }) => {
            let outcome = match outcome {
                OutcomeArg::Recovered => Outcome::Recovered,
                OutcomeArg::FalseAlarm => Outcome::FalseAlarm,
                OutcomeArg::LostTrack => Outcome::LostTrack,
            };
            let i = pc::resolve(&mut client, &incident_id, outcome, &note).await?;
            println!(
                "{} {} {}",
                i.incident_id,
                i.state().as_str_name(),
                i.outcome().as_str_name()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
