//! Every request message: the first byte picks the type, the rest goes through prost into
//! the handler's validation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| secretd::fuzzing::request(data));
