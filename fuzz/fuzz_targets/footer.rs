//! The footer parser: the input is a table file, the footer its last 48 bytes.
//! Seeds: `fuzz/corpus/footer/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringdb::internals::fuzz_footer_bytes(data));
