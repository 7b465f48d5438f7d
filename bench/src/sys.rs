//! Small operating-system helpers: file-descriptor limits, process RSS and CPU time, and a
//! description of the machine the benchmark runs on.

use std::fs;

use anyhow::{Context as _, Result, bail};

/// Raises the soft `RLIMIT_NOFILE` of the current process to its hard limit.
///
/// Child processes (the proxies, the `serve-echo` backend) inherit the raised
/// limit. Returns the `(soft, hard)` limits in force afterwards.
pub fn raise_nofile_limit() -> Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid `rlimit` for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Returns the hard `RLIMIT_NOFILE` of the current process.
pub fn nofile_hard_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_max)
}

/// The resident set size of process `pid` and all its descendants, in bytes: nginx
/// serves from worker processes its master forks.
pub fn tree_rss_bytes(pid: u32) -> Result<u64> {
    let mut total = vm_rss_bytes(pid)?;
    for child in children(pid) {
        // A child that exits meanwhile holds nothing more.
        total += tree_rss_bytes(child).unwrap_or(0);
    }
    Ok(total)
}

/// The child processes of `pid`, from each of its threads' `children` list.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Reads the resident set size (`VmRSS`) of process `pid` in bytes.
fn vm_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing VmRSS line {line:?}"))?;
            return Ok(kib * 1024);
        }
    }
    bail!("no VmRSS line in {path}")
}

/// The descriptors process `pid` has open now: how close a proxy holding many
/// connections is to its `RLIMIT_NOFILE`.
pub fn open_fds(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path)
        .with_context(|| format!("reading {path}"))?
        .count())
}

/// The soft `RLIMIT_NOFILE` of process `pid` (its "Max open files" in
/// `/proc/<pid>/limits`), to report the limit a child actually runs with.
pub fn nofile_limit_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/limits");
    let limits = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no \"Max open files\" in {path}"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .with_context(|| format!("empty {line:?}"))?
        .parse()
        .with_context(|| format!("parsing {line:?}"))
}

/// The load averages over 1, 5 and 15 minutes (`/proc/loadavg`), to tell whether the
/// machine was busy during a run.
pub fn load_average() -> Result<String> {
    let text = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

/// Number of CPUs available to this process.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One-line description of the machine: CPU count, CPU model and kernel.
pub fn machine_summary() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".to_string());
    format!("{} CPUs ({model}), Linux {kernel}", cpu_count())
}

/// Busy and total jiffies of all CPUs, from the first line of `/proc/stat`.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// CPU time process `pid` has used (all its threads, user and system), in seconds: what a
/// proxy spent on a load, whatever else the machine was running meanwhile.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    ticks_to_seconds(process_stat(pid)?.cpu_ticks)
}

/// Like [`process_cpu_seconds`], with the CPU time of the process's children added: nginx
/// serves from worker processes under its master.
pub fn process_tree_cpu_seconds(pid: u32) -> Result<f64> {
    let mut ticks = process_stat(pid)?.cpu_ticks;
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let Some(child) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile is simply not counted.
        if let Ok(stat) = process_stat(child)
            && stat.parent == pid
        {
            ticks += stat.cpu_ticks;
        }
    }
    ticks_to_seconds(ticks)
}

/// CPU time per unit of work in µs (`seconds` over `units`); `None` without a time or a
/// unit.
pub fn per_unit_us(seconds: Option<f64>, units: f64) -> Option<f64> {
    seconds.filter(|_| units > 0.0).map(|s| s / units * 1e6)
}

/// What the bench reads of `/proc/PID/stat`.
struct ProcessStat {
    /// The parent's pid.
    parent: u32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn process_stat(pid: u32) -> Result<ProcessStat> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields count from the
    // last `)`, whose next field is the state (3); the parent is 4, utime and stime 14 and 15.
    let after_name: Vec<&str> = stat
        .rsplit_once(')')
        .with_context(|| format!("no command name in {path}"))?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Result<u64> {
        after_name
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok(ProcessStat {
        parent: u32::try_from(field(4)?).context("parent pid")?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

fn ticks_to_seconds(ticks: u64) -> Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64 / per_second as f64)
}

/// Fraction of all CPU time that was busy during `window` (measured now,
/// before the benchmark starts, so it is other work on the machine).
pub fn cpu_busy_fraction(window: std::time::Duration) -> Result<f64> {
    let (busy0, total0) = cpu_jiffies()?;
    std::thread::sleep(window);
    let (busy1, total1) = cpu_jiffies()?;
    let total = total1.saturating_sub(total0).max(1);
    Ok(busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// Picks a currently free loopback port by binding port 0.
pub fn free_port() -> Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn cpu_time_of_this_process_grows_while_it_works() {
        let cpu =
            || super::process_cpu_seconds(std::process::id()).unwrap_or_else(|e| panic!("{e:#}"));
        let before = cpu();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut spins = 0u64;
        while cpu() <= before {
            assert!(Instant::now() < deadline, "no CPU time counted");
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }

    #[test]
    fn a_process_tree_counts_its_childrens_cpu_time() {
        // A child that spins for a while, alive (not yet waited for) when its parent's
        // tree is read.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 30",
            ])
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sh: {e}"));
        let me = std::process::id();
        let own = || super::process_cpu_seconds(me).unwrap_or_else(|e| panic!("{e:#}"));
        let tree = || super::process_tree_cpu_seconds(me).unwrap_or_else(|e| panic!("{e:#}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        // The child's spinning shows in the tree, not in this process's own time.
        while tree() < own() + 0.05 {
            assert!(
                Instant::now() < deadline,
                "the child's CPU time was not counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
