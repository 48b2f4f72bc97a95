//! A whole table file: written to a scratch file (in /dev/shm where it exists), opened
//! with the table reader, its index and data blocks walked and a few keys looked up.
//! Seeds: `fuzz/corpus/table_reader/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringdb::internals::fuzz_table_bytes(data));
