//! Fuzz target `conn`: see `herald_fuzz::entry::conn` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::entry::conn(data));
