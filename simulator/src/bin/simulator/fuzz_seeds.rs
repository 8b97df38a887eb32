//! `simulator fuzz-seeds`: writes the binary seeds of ingest's fuzz targets (open_sealed,
//! decode_batch) from `greenplate_simulator::fuzz_seeds`, after a change to the contract.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FuzzSeedsArgs {
    /// The corpus directory; the seeds go to its open_sealed/ and decode_batch/.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest/fuzz/corpus"))]
    corpus: PathBuf,
}

pub fn run(args: FuzzSeedsArgs) -> anyhow::Result<()> {
    let n = greenplate_simulator::fuzz_seeds::write(&args.corpus)?;
    println!("Wrote {n} seeds under {}.", args.corpus.display());
    Ok(())
}
