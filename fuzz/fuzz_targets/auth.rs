#![no_main]

// The body lives in the library (src/fuzzing.rs), so that `cargo test`
// replays this target's corpus through the very same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rendezvous::fuzzing::auth(data));
