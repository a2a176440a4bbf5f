//! What the scale benchmark measures with, apart from the calls: latency
//! samples and their percentiles, a process's CPU time and memory from
//! /proc, and pinning processes to cores (`sched_setaffinity`), so that the
//! coordinator has a core of its own and the simulated workers the others.
//! No gRPC here.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Instant;

/// Latencies of one kind of call, in microseconds, and its failures by code.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) micros: Vec<f64>,
    pub(super) errors: u64,
    pub(super) codes: BTreeMap<String, u64>,
}

impl Samples {
    pub(super) fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.micros.push(started.elapsed().as_secs_f64() * 1e6);
        } else {
            self.errors += 1;
        }
    }

    pub(super) fn record_result<T>(&mut self, started: Instant, r: &Result<T, tonic::Status>) {
        self.record(started, r.is_ok());
        if let Err(s) = r {
            *self.codes.entry(format!("{:?}", s.code())).or_default() += 1;
        }
    }
}

/// The q-quantile (0..=1) of `sorted` (nearest rank).
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Prints the percentile line of one kind of call and returns it as JSON.
pub(super) fn summary(name: &str, s: Samples) -> serde_json::Value {
    let mut v = s.micros;
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        quantile(&v, 0.5) / 1e3,
        quantile(&v, 0.99) / 1e3,
        v.last().copied().unwrap_or(f64::NAN) / 1e3,
    );
    let codes = if s.codes.is_empty() {
        String::new()
    } else {
        format!(
            "   ({})",
            s.codes.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
        )
    };
    println!(
        "{name:<10} {:>8} calls {:>5} errors   p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   max {max:>8.2} ms{codes}",
        v.len(),
        s.errors
    );
    serde_json::json!({"calls": v.len(), "errors": s.errors, "error_codes": s.codes, "p50_ms": p50, "p99_ms": p99, "max_ms": max})
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
pub(super) fn process_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")" and state.
    let clock = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks(11) + ticks(12)) as f64 / clock;
    let kib = |key: &str| -> Result<u64> {
        let value = amdim_shared::procfs::status_kib(&pid.to_string(), key).with_context(|| format!("/proc/{pid}/status"))?;
        Ok(value.unwrap_or(0))
    };
    Ok((cpu, kib("VmRSS")?, kib("VmHWM")?))
}

/// The cores this process may run on.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Pins the calling thread (and the threads and processes it starts
/// afterwards) to `cpus`.
pub(super) fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: the set is built with the libc macros and passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_reports_cpu_time_and_memory() {
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (cpu, rss, peak) = process_usage(std::process::id()).unwrap();
        assert!(cpu > 0.0 && rss > 0 && peak >= rss, "{cpu} {rss} {peak}");
    }

    #[test]
    fn a_pinned_thread_runs_only_where_it_was_pinned() {
        let all = allowed_cpus();
        assert!(!all.is_empty());
        let last = *all.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_to(&[last]).unwrap();
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
        assert_eq!(allowed_cpus(), all, "other threads keep their cores");
    }
}
