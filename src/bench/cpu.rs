//! CPU per operation (DESIGN §14, issue 23): the CPU time the server and Postgres spend
//! over a measured window, read from `/proc`.
//!
//! - **The server**: utime + stime of `--server-pid` (all its threads).
//! - **Postgres**: everything under the postmaster `--postgres-pid`: the utime + stime of
//!   its live children (backends, walwriter, checkpointer, autovacuum, …), plus its
//!   cutime + cstime (what the children that exited and were reaped left it), plus its
//!   own utime + stime. Sampled at both ends of a window, the difference is what Postgres
//!   spent in it, backends that started or exited within the window included.
//!
//! Caveats (BENCHMARKS.md says more): times are in clock ticks of 10 ms, so a window
//! needs seconds of CPU to be exact to a percent; the Postgres figure is the whole
//! cluster's, other databases' clients included; nothing here separates the load
//! generator's use of the shared cores from the server's.

use anyhow::Context;

use crate::Args;
use crate::support::{Report, round};

/// Clock ticks per second of the times in `/proc/PID/stat`: Linux's USER_HZ, which the
/// kernel ABI fixes at 100 on x86 and arm (whatever the kernel's own HZ).
pub const TICKS_PER_SEC: u64 = 100;

/// The fields of one `/proc/PID/stat` line that CPU accounting needs (times in ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 1: the process id.
    pub pid: u32,
    /// Field 2 without its parentheses: the command name (may hold spaces and parentheses).
    pub comm: String,
    /// Field 4: the parent's process id.
    pub ppid: u32,
    /// Field 14: CPU time in user mode.
    pub utime: u64,
    /// Field 15: CPU time in kernel mode.
    pub stime: u64,
    /// Field 16: user time of the children that exited and were waited for.
    pub cutime: u64,
    /// Field 17: kernel time of the children that exited and were waited for.
    pub cstime: u64,
}

impl ProcStat {
    /// Parses one `/proc/PID/stat` line. The command name may hold spaces and `)`, so
    /// the fields after it are counted from its last closing parenthesis.
    pub fn parse(line: &str) -> anyhow::Result<ProcStat> {
        let open = line.find(" (").context("no '(' after the pid")?;
        let close = line.rfind(')').context("no ')' after the command name")?;
        anyhow::ensure!(close > open, "')' before '('");
        let pid = line[..open].trim().parse().context("bad pid")?;
        let comm = line[open + 2..close].to_string();
        // Fields 3.. (state, ppid, …): field N is rest[N - 3].
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            let text = rest
                .get(n - 3)
                .with_context(|| format!("stat line has no field {n}"))?;
            // cutime and cstime are signed in the kernel's format; never negative here.
            let v: i64 = text
                .parse()
                .with_context(|| format!("field {n} is not a number: {text:?}"))?;
            Ok(v.max(0) as u64)
        };
        Ok(ProcStat {
            pid,
            comm,
            ppid: u32::try_from(field(4)?).context("ppid out of range")?,
            utime: field(14)?,
            stime: field(15)?,
            cutime: field(16)?,
            cstime: field(17)?,
        })
    }

    /// Reads and parses `/proc/PID/stat`.
    pub fn read(pid: u32) -> anyhow::Result<ProcStat> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        ProcStat::parse(&text).with_context(|| format!("cannot parse {path}"))
    }

    /// Its own CPU time (user + kernel), in ticks.
    pub fn own_ticks(&self) -> u64 {
        self.utime + self.stime
    }

    /// The CPU time its exited and reaped children left it, in ticks.
    pub fn reaped_ticks(&self) -> u64 {
        self.cutime + self.cstime
    }
}

/// The postmaster's and all its children's CPU time so far, in ticks: its own, its live
/// children's, and what exited children left in its cutime + cstime.
pub fn postgres_ticks(postmaster: u32) -> anyhow::Result<u64> {
    // A child reaped between reading the postmaster and reading the child would be
    // missed (or counted twice): retry until the postmaster's reaped time held still.
    for _ in 0..3 {
        let before = ProcStat::read(postmaster)
            .context("is --postgres-pid the postmaster's pid (first line of postmaster.pid)?")?;
        let live = children_ticks(postmaster)?;
        let after = ProcStat::read(postmaster)?;
        if after.reaped_ticks() == before.reaped_ticks() {
            return Ok(after.own_ticks() + after.reaped_ticks() + live);
        }
    }
    let pm = ProcStat::read(postmaster)?;
    Ok(pm.own_ticks() + pm.reaped_ticks() + children_ticks(postmaster)?)
}

/// The sum of utime + stime over the live processes whose parent is `parent`.
fn children_ticks(parent: u32) -> anyhow::Result<u64> {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let entry = entry.context("cannot list /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: its time is (or will
        // be) in its parent's reaped time.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let stat = ProcStat::parse(&text).with_context(|| format!("/proc/{pid}/stat"))?;
        if stat.ppid == parent {
            ticks += stat.own_ticks();
        }
    }
    Ok(ticks)
}

/// The processes to account, from `--server-pid` and `--postgres-pid` (either may be
/// absent: its figures are then left out).
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    server: Option<u32>,
    postgres: Option<u32>,
}

/// Cumulative CPU ticks of the accounted processes at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    server: Option<u64>,
    postgres: Option<u64>,
}

impl Cpu {
    /// The processes named on the command line.
    pub fn new(args: &Args) -> Cpu {
        Cpu {
            server: args.server_pid,
            postgres: args.postgres_pid,
        }
    }

    /// Takes a sample now.
    pub fn sample(&self) -> anyhow::Result<Sample> {
        let server = self
            .server
            .map(|pid| {
                ProcStat::read(pid)
                    .map(|s| s.own_ticks())
                    .context("is --server-pid right?")
            })
            .transpose()?;
        let postgres = self.postgres.map(postgres_ticks).transpose()?;
        Ok(Sample { server, postgres })
    }

    /// Adds to `r` what was spent since `start`: `server_cpu_s` and
    /// `server_cpu_us_per_<unit>`, and the same for `postgres_`, per one of `ops`
    /// operations.
    pub fn report_since(
        &self,
        start: Sample,
        r: &mut Report,
        ops: u64,
        unit: &str,
    ) -> anyhow::Result<()> {
        let end = self.sample()?;
        let mut add = |who: &str, a: Option<u64>, b: Option<u64>| {
            if let (Some(a), Some(b)) = (a, b) {
                let secs = b.saturating_sub(a) as f64 / TICKS_PER_SEC as f64;
                let per_op = secs * 1e6 / ops.max(1) as f64;
                r.set(format!("{who}_cpu_s"), round(secs));
                r.set(format!("{who}_cpu_us_per_{unit}"), round(per_op));
            }
        };
        add("server", start.server, end.server);
        add("postgres", start.postgres, end.postgres);
        Ok(())
    }
}

/// `cpu`: the accounted processes' cumulative CPU ticks now, for scripts that measure
/// something else the same way (bench/compare samples around pgbench and subtracts).
pub fn now(args: &Args) -> anyhow::Result<Report> {
    let cpu = Cpu::new(args);
    anyhow::ensure!(
        cpu.server.is_some() || cpu.postgres.is_some(),
        "cpu needs --server-pid or --postgres-pid"
    );
    let s = cpu.sample()?;
    let mut r = Report::new("cpu", args);
    r.set("ticks_per_sec", TICKS_PER_SEC);
    if let Some(t) = s.server {
        r.set("server_cpu_ticks", t);
    }
    if let Some(t) = s.postgres {
        r.set("postgres_cpu_ticks", t);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_this_process() {
        let text = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
        let s = ProcStat::parse(&text).expect("parses");
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(!s.comm.is_empty());
        // Burn a little CPU: the times are cumulative, so they never go back.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let later = ProcStat::read(std::process::id()).expect("reads");
        assert!(later.own_ticks() >= s.own_ticks());
    }

    #[test]
    fn a_name_with_spaces_and_parentheses() {
        let line = "4242 (a b) (c)) R 17 4242 4242 0 -1 4194560 1 0 0 0 \
                    123 45 6 7 20 0 1 0 100 1000 50 18446744073709551615";
        let s = ProcStat::parse(line).expect("parses");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "a b) (c)");
        assert_eq!(s.ppid, 17);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (123, 45, 6, 7));
        assert_eq!(s.own_ticks(), 168);
        assert_eq!(s.reaped_ticks(), 13);
    }

    #[test]
    fn refuses_a_short_or_broken_line() {
        assert!(ProcStat::parse("4242 (x) R 1 2 3").is_err());
        assert!(ProcStat::parse("4242 x R 1").is_err());
        assert!(ProcStat::parse("").is_err());
    }

    #[test]
    fn a_child_is_counted_while_it_runs_and_after_it_exits() {
        // This process as the "postmaster": a child that burns CPU is counted while it
        // lives (its own times) and after it was waited for (our cutime + cstime).
        let me = std::process::id();
        let reaped0 = ProcStat::read(me).expect("reads").reaped_ticks();
        let t0 = postgres_ticks(me).expect("samples");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh runs");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let live = ProcStat::read(child.id()).expect("the child runs");
        assert_eq!(live.ppid, me);
        child.wait().expect("waits");
        let t1 = postgres_ticks(me).expect("samples");
        let reaped = ProcStat::read(me).expect("reads").reaped_ticks() - reaped0;
        assert!(reaped > 0, "the child's time went to our cutime + cstime");
        assert!(t1 - t0 >= reaped, "{t0} -> {t1}, the child took {reaped}");
    }
}
