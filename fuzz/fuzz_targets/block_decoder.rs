//! A block (contents + trailer) as the table reader decodes it, and the same bytes taken
//! as contents with a fresh trailer, so inputs reach the entry parser past the CRC.
//! Seeds: `fuzz/corpus/block_decoder/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringdb::internals::fuzz_block_bytes(data));
