//! Reading a process's numbers from Linux's /proc (benchmarks report memory
//! from it). Only parsing here; nothing is cached.

/// Field `key` (e.g. `VmHWM`, `VmRSS`) of `/proc/<pid>/status` in KiB, for
/// `pid` a process id or `self`; Ok(None) when the file has no such field.
pub fn status_kib(pid: &str, key: &str) -> std::io::Result<Option<u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(field_kib(&status, key))
}

fn field_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_their_whole_name() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nVmRSSX:\t 7 kB\n";
        assert_eq!(field_kib(status, "VmHWM"), Some(2048));
        assert_eq!(field_kib(status, "VmRSS"), Some(1024));
        assert_eq!(field_kib(status, "VmSwap"), None);
        assert!(status_kib("self", "VmRSS").unwrap().unwrap() > 0);
    }
}
