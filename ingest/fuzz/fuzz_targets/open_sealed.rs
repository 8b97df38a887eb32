//! Stage 1, open: a topic and a payload from the fuzzer against one provisioned reader.
//! Input: one byte n, then n bytes of topic, then the payload (seeds in corpus/open_sealed
//! are sealed for `rd-fuzz` with the secret below).
#![no_main]

use greenplate_ingest::pipeline::open;
use greenplate_registry::{Reader, Readers};
use libfuzzer_sys::fuzz_target;

const READER_ID: &str = "rd-fuzz";
const SECRET: &str = "fuzz-secret-not-for-production";

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = rest.split_at(usize::from(n).min(rest.len()));
    // A fresh directory per input, so every input sees the same state (last seq 0).
    let readers = Readers::default();
    readers.insert(Reader::new(
        READER_ID.into(),
        "fuzz".into(),
        23.25,
        116.6,
        SECRET,
    ));
    match open::open(&readers, &open::Admissions::default(), topic, payload) {
        Ok((reader, batch)) => {
            assert_eq!(reader.id, READER_ID);
            assert_eq!(batch.reader_id, READER_ID);
            assert!(batch.seq > 0);
        }
        Err(rejection) => {
            assert!(!rejection.reason().is_empty());
            let _ = rejection.to_string();
        }
    }
});
