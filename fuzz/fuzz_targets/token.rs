//! Token verification: raw bearer tokens and, behind a valid signature, arbitrary claims.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| secretd::fuzzing::token(data));
