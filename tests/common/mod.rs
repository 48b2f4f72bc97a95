//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ringdb::io::{Backend, Io, IoOptions};

/// An `Io` on the backend the environment asks for (`RINGDB_IO_BACKEND`), as every engine test uses.
pub fn io() -> Io {
    Io::new(IoOptions::default()).expect("I/O backend")
}

/// An `Io` with options.
pub fn io_with(options: IoOptions) -> Io {
    Io::new(options).expect("I/O backend")
}

/// Which backend the suite runs on.
pub fn suite_backend() -> Backend {
    io().backend()
}

/// A block whose content is derived from `(offset, tag)`, so any block read back can be checked.
pub fn pattern(len: usize, offset: u64, tag: u64) -> Vec<u8> {
    let mut state = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The names of the table files (`*.sst`) in `dir`.
pub fn sst_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sst"))
        .collect()
}
