//! What the target process costs, read from `/proc`: its resident memory and its major page
//! faults.

/// Resident memory of a process now and at its peak (`VmRSS` and `VmHWM` of
/// `/proc/<pid>/status`), in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Major page faults of a process so far (`/proc/<pid>/stat`, field 12): pages read back from
/// disk. On these machines the host reclaims cold file pages (the binary's own code among
/// them), and every fault on one stalls a request for milliseconds: worth reporting beside
/// the latencies it explains.
pub(crate) fn major_faults(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(9)?.parse().ok()
}

/// CPU time a process has used so far, user and system, in seconds (`/proc/<pid>/stat`,
/// fields 14 and 15, which count the threads that already ended too). They are in clock
/// ticks of `USER_HZ`, which Linux fixes at 100 on every architecture wxpay runs on.
pub(crate) fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user as f64 / 100.0, system as f64 / 100.0))
}
