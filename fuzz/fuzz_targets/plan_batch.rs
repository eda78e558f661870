//! The counter rules: `plan_batch` against the model in `store/append/check.rs`, on
//! scenarios built from the fuzzer's bytes (three streams with histories, one unknown
//! stream, outsiders, a batch of posts, a gap).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| secretd::fuzzing::plan_batch(data));
