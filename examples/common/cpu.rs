//! The CPU time a benchmark's process uses, for figures per operation: on a
//! shared disk whose speed swings between runs, what an operation costs the
//! CPU moves far less than how many operations a second get done.

use std::time::Duration;

/// CPU time (user and system) of this process so far, all threads, from
/// `/proc/self/stat` (10 ms ticks). fio runs as a child and is not counted.
pub fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces) start at
    // `state`, field 3; utime and stime are fields 14 and 15.
    let after_comm = &stat[stat.rfind(')').expect("comm in /proc/self/stat") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |field: usize| fields[field - 3].parse::<u64>().expect("a tick count");
    // USER_HZ is 100 on every Linux architecture this engine runs on.
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}
