//! Fuzz target `gguf`: see `expertslab_tests::fuzz::gguf`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| expertslab_tests::fuzz::gguf(data));
