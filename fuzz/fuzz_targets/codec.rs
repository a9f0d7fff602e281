//! Fuzz target `codec`: see `herald_fuzz::entry::codec` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_fuzz::entry::codec(data));
