//! greenplate benchmarks. The criterion benchmarks live in `benches/benches/`; figures and
//! the commands that produced them are in `benches/README.md`.
