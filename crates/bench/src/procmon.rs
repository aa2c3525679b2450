//! Memory and CPU of a system-under-test process, read from /proc.
//!
//! * Peak RSS: `VmHWM` of the top process (the autoscaler, or the seed's bash), sampled every
//!   200 ms; the kernel keeps the high-water mark, so the last sample before the stop is exact
//!   up to that moment.
//! * CPU: when the top process has exited, it is left unreaped for a moment (`waitid` with
//!   `WNOWAIT`) and its `/proc/PID/stat` gives its own `utime + stime` and, in `cutime +
//!   cstime`, everything its reaped descendants used (runners, curl, jq, job steps).
//! * Runner CPU: each sample walks the descendants and remembers, per runner process
//!   (`fake-forgejo-runner`), its last `utime + stime + cutime + cstime` (the job's steps are
//!   its children). Subtracting that from the tree total leaves the orchestration cost.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// The kernel truncates `comm` to 15 bytes.
const RUNNER_COMM_PREFIX: &str = "fake-forgejo-ru";
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// CPU ticks of one process, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTicks {
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

impl CpuTicks {
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }

    pub fn with_children(&self) -> u64 {
        self.own() + self.cutime + self.cstime
    }
}

/// The fields of `/proc/PID/stat` the monitor needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStat {
    pub comm: String,
    pub ppid: u32,
    pub cpu: CpuTicks,
    /// Start time in ticks since boot: with the pid, identifies a process across pid reuse.
    pub start: u64,
}

/// Parses `/proc/PID/stat`. The command name is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is the state (field 3 of the man page); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        ppid: field(4)? as u32,
        cpu: CpuTicks {
            utime: field(14)?,
            stime: field(15)?,
            cutime: field(16)?,
            cstime: field(17)?,
        },
        start: field(22)?,
    })
}

/// `VmHWM` in KiB from `/proc/PID/status`.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the machine, as (pid, stat).
fn all_processes() -> Vec<(u32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// Pids of the descendants of `root` among `processes`.
pub fn descendants(root: u32, processes: &[(u32, ProcStat)]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, stat) in processes {
        children.entry(stat.ppid).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for kid in kids {
                out.push(*kid);
                stack.push(*kid);
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct Samples {
    peak_rss_kib: u64,
    /// Last ticks (with children) seen per runner process, keyed by (pid, start).
    runner_ticks: HashMap<(u32, u64), u64>,
    runner_processes_seen: u64,
}

/// Samples a process tree in a background thread until [`Monitor::finish`].
pub struct Monitor {
    root: u32,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    thread: Option<JoinHandle<()>>,
}

/// What the monitor measured.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub peak_rss_kib: u64,
    /// The top process alone.
    pub cpu_self_s: f64,
    /// The top process and all its reaped descendants.
    pub cpu_tree_s: f64,
    /// The runner processes among the descendants (as last sampled).
    pub cpu_runners_s: f64,
    pub runner_processes_seen: u64,
}

impl Monitor {
    pub fn start(root: u32) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(root, &samples);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Monitor {
            root,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// One more sample now (before the process is told to stop).
    pub fn sample_now(&self) {
        sample(self.root, &self.samples);
    }

    /// Stops sampling. `final_ticks` are the top process's ticks read while it was an
    /// unreaped zombie (see [`exited_ticks`]).
    pub fn finish(mut self, final_ticks: Option<CpuTicks>) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let tick = ticks_per_second();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let runners: u64 = samples.runner_ticks.values().sum();
        let ticks = final_ticks.unwrap_or_default();
        Usage {
            peak_rss_kib: samples.peak_rss_kib,
            cpu_self_s: ticks.own() as f64 / tick,
            cpu_tree_s: ticks.with_children() as f64 / tick,
            cpu_runners_s: runners as f64 / tick,
            runner_processes_seen: samples.runner_processes_seen,
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample(root: u32, samples: &Mutex<Samples>) {
    let hwm = std::fs::read_to_string(format!("/proc/{root}/status"))
        .ok()
        .and_then(|s| parse_vm_hwm(&s));
    let processes = all_processes();
    let tree = descendants(root, &processes);
    let by_pid: HashMap<u32, &ProcStat> = processes.iter().map(|(p, s)| (*p, s)).collect();
    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hwm) = hwm {
        samples.peak_rss_kib = samples.peak_rss_kib.max(hwm);
    }
    for pid in tree {
        let Some(stat) = by_pid.get(&pid) else {
            continue;
        };
        if stat.comm.starts_with(RUNNER_COMM_PREFIX) {
            let key = (pid, stat.start);
            if !samples.runner_ticks.contains_key(&key) {
                samples.runner_processes_seen += 1;
            }
            samples.runner_ticks.insert(key, stat.cpu.with_children());
        }
    }
}

/// Waits up to `timeout` for `pid` (a child of this process) to exit, without reaping it,
/// and returns its CPU ticks read from the zombie's `/proc/PID/stat`. The caller reaps it
/// afterwards (e.g. `Child::wait`).
pub fn exited_ticks(pid: u32, timeout: Duration) -> Option<CpuTicks> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: si_pid is valid to read after a successful waitid.
        if unsafe { info.si_pid() } == pid as i32 {
            return read_stat(pid).map(|s| s.cpu);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 11 5 20 0 1 0 98765 1000 10 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.comm, "a (b) c");
        assert_eq!(stat.ppid, 1);
        assert_eq!(
            stat.cpu,
            CpuTicks {
                utime: 7,
                stime: 3,
                cutime: 11,
                cstime: 5
            }
        );
        assert_eq!(stat.start, 98765);
        assert_eq!(stat.cpu.own(), 10);
        assert_eq!(stat.cpu.with_children(), 26);
    }

    #[test]
    fn parses_vm_hwm() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\n"),
            Some(4321)
        );
        assert_eq!(parse_vm_hwm("Name:\tzombie\n"), None);
    }

    #[test]
    fn finds_grandchildren() {
        let p = |pid: u32, ppid: u32| {
            (
                pid,
                ProcStat {
                    comm: "x".into(),
                    ppid,
                    cpu: CpuTicks::default(),
                    start: 0,
                },
            )
        };
        let procs = vec![p(10, 1), p(11, 10), p(12, 11), p(13, 1), p(14, 12)];
        let mut found = descendants(10, &procs);
        found.sort();
        assert_eq!(found, vec![11, 12, 14]);
    }

    #[test]
    fn measures_a_real_child() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh starts");
        let monitor = Monitor::start(child.id());
        let ticks = exited_ticks(child.id(), Duration::from_secs(30));
        let _ = child.wait();
        let usage = monitor.finish(ticks);
        assert!(ticks.is_some(), "the zombie's stat was read");
        assert!(usage.cpu_tree_s >= usage.cpu_self_s);
    }
}
