//! The committed binary seeds of the fuzz targets `open_sealed` and `decode_batch`
//! (`ingest/fuzz/corpus`) still do what their names say. The seeds are made by
//! `greenplate_simulator::fuzz_seeds`; after a change to the contract, rewrite them with
//! `cargo run -p greenplate-simulator -- fuzz-seeds` (see `ingest/fuzz/README.md`).

use std::path::PathBuf;

use greenplate_ingest::pipeline::open;
use greenplate_registry::{Reader, Readers};
use greenplate_simulator::fuzz_seeds::{READER_ID, SECRET, decode_batch_seeds, open_sealed_seeds};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn open_seed(input: &[u8]) -> Result<(), &'static str> {
    let (&n, rest) = input.split_first().expect("seed is not empty");
    let (topic, payload) = rest.split_at(usize::from(n));
    let readers = Readers::default();
    readers.insert(Reader::new(
        READER_ID.into(),
        "fuzz".into(),
        23.25,
        116.6,
        SECRET,
    ));
    open::open(&readers, &open::Admissions::default(), topic, payload)
        .map(|_| ())
        .map_err(|r| r.reason())
}

/// The sealed seeds are random (fresh nonces), so the committed files are checked for
/// what they do rather than compared byte for byte.
#[test]
fn committed_open_sealed_seeds_open_or_fail_as_named() {
    for (name, _, expected) in open_sealed_seeds() {
        let path = corpus("open_sealed").join(format!("{name}.bin"));
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(open_seed(&input), expected, "{name}");
    }
}

#[test]
fn committed_decode_batch_seeds_are_current() {
    for (name, bytes) in decode_batch_seeds() {
        let path = corpus("decode_batch").join(format!("{name}.bin"));
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed, bytes,
            "{name}: rewrite the seeds (see the file's doc)"
        );
    }
}
