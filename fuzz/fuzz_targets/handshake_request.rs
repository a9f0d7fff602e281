//! Fuzz target `handshake_request`: see `herald_fuzz::entry::handshake_request` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::entry::handshake_request(data));
