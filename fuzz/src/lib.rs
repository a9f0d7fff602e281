//! herald's fuzz targets, as plain functions (see [`entry`]); `fuzz_targets/*.rs` wrap them for libfuzzer.

pub mod entry;
