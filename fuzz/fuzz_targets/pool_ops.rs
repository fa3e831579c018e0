//! Fuzz target `pool_ops`: see `expertslab_tests::fuzz::pool_ops`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| expertslab_tests::fuzz::pool_ops(data));
