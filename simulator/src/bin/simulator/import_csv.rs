//! `simulator import-csv`: a CSV of synthetic registrations for `greenplate registry import`.

use std::path::PathBuf;

use anyhow::Context;
use greenplate_simulator::town;

#[derive(clap::Args)]
pub struct ImportCsvArgs {
    /// Rows to write.
    #[arg(long, default_value_t = 210_000)]
    rows: u64,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Distinguishes the tags, plates and owners of one file from another's.
    #[arg(long, default_value_t = 1)]
    run: u64,
}

pub fn run(args: ImportCsvArgs) -> anyhow::Result<()> {
    town::write_import_csv(&args.out, args.rows, args.run)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("Wrote {} rows to {}.", args.rows, args.out.display());
    Ok(())
}
