//! The job files of `fio-configs/` as the benchmarks read them: every job
//! uses io_uring with O_DIRECT on the directory the benchmarks pass, and a
//! job split over several fio threads is read as its total queue depth.

#[path = "../examples/common/fio.rs"]
mod fio;

use std::path::Path;

fn configs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fio-configs")
}

#[test]
fn every_job_file_parses_and_uses_io_uring_with_o_direct_in_the_given_directory() {
    let jobs = fio::load_jobs(&configs()).expect("fio-configs parse");
    assert!(jobs.len() >= 10, "found only {} jobs", jobs.len());
    for job in &jobs {
        let text = std::fs::read_to_string(&job.path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for wanted in ["ioengine=io_uring", "direct=1", "directory=${RINGDB_FIO_DIR}"] {
            assert!(lines.contains(&wanted), "{}: no {wanted}", job.path.display());
        }
        assert!(job.block_bytes > 0 && job.queue_depth > 0 && job.file_bytes > 0, "{job:?}");
    }
}

#[test]
fn a_job_over_two_threads_keeps_its_total_depth_and_the_one_thread_job_is_unchanged() {
    let jobs = fio::load_jobs(&configs()).unwrap();
    let find = |name: &str| jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name}"));
    let split = find("rand_read_4k_qd32_2threads");
    assert_eq!((split.queue_depth, split.fio_threads), (32, 2));
    let single = find("rand_read_4k_qd32");
    assert_eq!((single.queue_depth, single.fio_threads), (32, 1));
    assert_eq!((split.block_bytes, split.file_bytes, split.rw.as_str()), (4096, 1 << 30, "randread"));
}

#[test]
fn split_jobs_without_group_reporting_and_empty_jobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.fio");
    let job = "[global]\nioengine=io_uring\ndirect=1\n[split]\nfilename=f\nrw=randread\nbs=4k\niodepth=16\nnumjobs=2\nsize=1g\n";
    std::fs::write(&path, job).unwrap();
    let error = fio::parse_job(&path).unwrap_err();
    assert!(error.contains("group_reporting"), "{error}");
    std::fs::write(&path, format!("{job}group_reporting=1\n")).unwrap();
    assert_eq!(fio::parse_job(&path).unwrap().queue_depth, 32);
    // A job with nothing in flight would leave the engine side nothing to wait for.
    std::fs::write(&path, job.replace("numjobs=2", "numjobs=0")).unwrap();
    assert!(fio::parse_job(&path).unwrap_err().contains("at least 1"));
}
