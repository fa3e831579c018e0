//! Fuzz target `layout`: see `expertslab_tests::fuzz::layout`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| expertslab_tests::fuzz::layout(data));
