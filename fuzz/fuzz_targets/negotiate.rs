//! Fuzz target `negotiate`: see `herald_fuzz::entry::negotiate` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::entry::negotiate(data));
