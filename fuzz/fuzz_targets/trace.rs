//! Fuzz target `trace`: see `expertslab_tests::fuzz::trace`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| expertslab_tests::fuzz::trace(data));
