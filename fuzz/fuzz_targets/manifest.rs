//! The MANIFEST: the first byte selects what the rest is (taken modulo 3) --
//! 0: one version edit, decoded, re-encoded and decoded again (the two must be equal);
//! 1: a whole MANIFEST file, written to a scratch directory (in /dev/shm where it exists)
//!    and replayed as opening a database does;
//! 2: edit payloads (each a length byte and its bytes) written as the records of a MANIFEST
//!    with valid checksums, then replayed, so mutations reach the edit decoder and the
//!    replay of edits without forging CRCs.
//! Seeds: `fuzz/corpus/manifest/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringdb::internals::fuzz_manifest(data));
