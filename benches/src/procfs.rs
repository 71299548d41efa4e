//! What a process uses, from Linux's `/proc`: CPU time, memory, open file descriptors.

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux
/// architecture Rust targets).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds `pid` ("self" for this process) has used, over all its threads.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it are
    // counted from the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// The peak resident set size of `pid` in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

/// The current resident set size of `pid` in MiB (`VmRSS`).
pub fn rss_mib(pid: &str) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib / 1024.0)
}

/// The number of file descriptors `pid` has open.
pub fn open_fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn status_kib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One line about the machine and its load, printed with every result: the numbers mean
/// little without it on a shared machine.
pub fn machine_line() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // The machine's CPUs, not this process's share of them (`loadtest --pin` narrows that).
    let cpus = match cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
    {
        0 => std::thread::available_parallelism().map_or(0, |n| n.get()),
        n => n,
    };
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("machine: {cpus} CPUs ({model}), load average {load}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(peak_rss_mib("self").unwrap() > 0.0);
        assert!(rss_mib("self").unwrap() > 0.0);
        assert!(open_fds("self").unwrap() >= 3);
    }
}
