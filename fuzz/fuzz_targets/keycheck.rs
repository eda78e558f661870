//! Public-key parsing and canonicalisation (PostKey's `key_data`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| secretd::fuzzing::canonicalize_key(data));
