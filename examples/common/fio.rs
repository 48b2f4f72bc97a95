//! fio side of the benchmarks: reading the job files of `fio-configs/` and
//! running them. Shared by `io_bench` and `db_bench` (`#[path]` module).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One job of a fio file, reduced to what the engine side needs.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub path: PathBuf,
    pub file_name: String,
    pub rw: String,
    pub block_bytes: usize,
    /// Ops in flight in all: `iodepth` times `numjobs`.
    pub queue_depth: usize,
    /// fio threads sharing `queue_depth` (`numjobs`, reported as one with
    /// `group_reporting`); the engine side runs as for one thread.
    pub fio_threads: usize,
    pub file_bytes: u64,
    pub fdatasync: bool,
    /// `end_fsync=1`: the file is synced once its writes are done, and the
    /// job's time includes that sync (as a table's build time does).
    pub end_fsync: bool,
    /// The job covers its file once (no `time_based`): it measures one pass
    /// over a new file rather than a time-limited loop.
    pub one_pass: bool,
    /// Further job sections in the same file that run alongside this one (such
    /// as a compaction's writes next to its reads). Only db_bench runs those
    /// files; the figures reported are this (the first) job's.
    pub companion_jobs: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub mib_per_sec: f64,
    pub iops: f64,
    pub mean_latency_us: f64,
    /// CPU time (user and system, all threads) per operation, in µs; 0 where not measured.
    pub cpu_us_per_op: f64,
}

impl Figures {
    pub fn mean(rounds: &[Figures]) -> Figures {
        let n = rounds.len().max(1) as f64;
        Figures {
            mib_per_sec: rounds.iter().map(|f| f.mib_per_sec).sum::<f64>() / n,
            iops: rounds.iter().map(|f| f.iops).sum::<f64>() / n,
            mean_latency_us: rounds.iter().map(|f| f.mean_latency_us).sum::<f64>() / n,
            cpu_us_per_op: rounds.iter().map(|f| f.cpu_us_per_op).sum::<f64>() / n,
        }
    }
}

/// The median (the mean of the middle two for an even count); None if empty.
/// The benchmarks report the median of per-round paired ratios: a round in
/// which the host stalled one side does not swing it.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let value: u64 = digits.parse().ok()?;
    let unit = match text[digits.len()..].trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    Some(value * unit)
}

pub fn parse_job(path: &Path) -> Result<Job, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The global section and the first job section describe the job; later
    // job sections are companions that fio runs at the same time.
    let mut first_job: Option<String> = None;
    let mut companion_jobs = 0;
    let mut keys: HashMap<String, String> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if name != "global" {
                match &first_job {
                    None => first_job = Some(name.to_string()),
                    Some(_) => companion_jobs += 1,
                }
            }
            continue;
        }
        if companion_jobs > 0 {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, "1"));
        keys.insert(key.trim().to_string(), value.trim().to_string());
    }
    if let Some(name) = first_job {
        keys.insert("__job".into(), name);
    }
    let get = |key: &str| keys.get(key).cloned().ok_or(format!("{}: no {key}=", path.display()));
    let iodepth: usize = get("iodepth")?.parse().map_err(|e| format!("iodepth: {e}"))?;
    let fio_threads: usize = match keys.get("numjobs") {
        Some(n) => n.parse().map_err(|e| format!("numjobs: {e}"))?,
        None => 1,
    };
    if iodepth == 0 || fio_threads == 0 {
        return Err(format!("{}: iodepth and numjobs must be at least 1", path.display()));
    }
    // fio reports several threads of one job as one only when asked to;
    // without it the figures read would be the first thread's alone.
    if fio_threads > 1 && keys.get("group_reporting").is_none_or(|v| v == "0") {
        return Err(format!("{}: numjobs={fio_threads} needs group_reporting=1", path.display()));
    }
    Ok(Job {
        name: get("__job")?,
        path: path.to_path_buf(),
        file_name: get("filename")?,
        rw: get("rw")?,
        block_bytes: parse_size(&get("bs")?).ok_or("bad bs")? as usize,
        queue_depth: iodepth * fio_threads,
        fio_threads,
        file_bytes: parse_size(&get("size")?).ok_or("bad size")?,
        fdatasync: keys.get("fdatasync").is_some_and(|v| v != "0"),
        end_fsync: keys.get("end_fsync").is_some_and(|v| v != "0"),
        one_pass: keys.get("time_based").is_none_or(|v| v == "0"),
        companion_jobs,
    })
}

pub fn fio_available() -> bool {
    Command::new("fio").arg("--version").output().is_ok_and(|o| o.status.success())
}

pub fn run_fio(job: &Job, dir: &Path, runtime: Duration) -> Result<Figures, String> {
    run_fio_file(job, &job.path, dir, runtime)
}

/// [`run_fio`] with the job's `size=` set to `size_bytes`: a one-pass write
/// job then covers exactly as many bytes as the engine wrote just before.
pub fn run_fio_sized(job: &Job, dir: &Path, runtime: Duration, size_bytes: u64) -> Result<Figures, String> {
    let text = std::fs::read_to_string(&job.path).map_err(|e| format!("{}: {e}", job.path.display()))?;
    let sized: String = text
        .lines()
        .map(
            |line| if line.trim_start().starts_with("size=") { format!("size={size_bytes}") } else { line.to_string() },
        )
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join(format!("{}.sized.fio", job.name));
    std::fs::write(&path, sized).map_err(|e| format!("{}: {e}", path.display()))?;
    let figures = run_fio_file(job, &path, dir, runtime);
    let _ = std::fs::remove_file(&path);
    figures
}

fn run_fio_file(job: &Job, job_file: &Path, dir: &Path, runtime: Duration) -> Result<Figures, String> {
    if job.rw == "write" {
        let _ = std::fs::remove_file(dir.join(&job.file_name));
    }
    let output = Command::new("fio")
        .arg(job_file)
        .arg("--output-format=json")
        .env("RINGDB_FIO_DIR", dir)
        .env("RINGDB_FIO_RUNTIME", runtime.as_secs().max(1).to_string())
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    if !output.status.success() {
        return Err(format!("fio failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON document.
    let json_start = stdout.find('{').ok_or("no JSON from fio")?;
    let report: serde_json::Value =
        serde_json::from_str(&stdout[json_start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let side = if job.rw.contains("write") { "write" } else { "read" };
    let job_report = &report["jobs"][0];
    let stats = &job_report[side];
    let bytes_per_sec = stats["bw_bytes"].as_f64().ok_or("no bw_bytes")?;
    // usr_cpu and sys_cpu are percentages of job_runtime, which (like the
    // CPU times behind them) sums the threads of a group-reported job.
    let cpu_percent = job_report["usr_cpu"].as_f64().unwrap_or(0.0) + job_report["sys_cpu"].as_f64().unwrap_or(0.0);
    let runtime_us = job_report["job_runtime"].as_f64().unwrap_or(0.0) * 1000.0;
    let total_ios = stats["total_ios"].as_f64().unwrap_or(0.0);
    Ok(Figures {
        iops: stats["iops"].as_f64().ok_or("no iops")?,
        mib_per_sec: bytes_per_sec / (1 << 20) as f64,
        mean_latency_us: stats["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0
            + stats["slat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        cpu_us_per_op: if total_ios > 0.0 { cpu_percent / 100.0 * runtime_us / total_ios } else { 0.0 },
    })
}

/// The jobs of a fio-configs directory, sorted by name.
pub fn load_jobs(dir: &Path) -> Result<Vec<Job>, String> {
    let mut jobs = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "fio"))
        .map(|path| parse_job(&path))
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(jobs)
}
