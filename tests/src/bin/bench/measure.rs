//! What a scenario measures: requests and their latencies under a closed-loop
//! load, and the CPU time and memory of the processes a message goes through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use system_tests::Stack;

pub struct Figures {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

impl Figures {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The load generator's HTTP client: a connection kept for each of up to 256
/// clients at once.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
}

/// Runs `clients` loops of `request(client_index)` for `duration`.
pub async fn load<F, Fut>(clients: usize, duration: Duration, request: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let request = request.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latencies) = (0, 0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if request(i).await {
                    ok += 1;
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            (ok, errors, latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut figures = Figures {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        if let Ok((ok, errors, latencies)) = task.await {
            figures.requests += ok;
            figures.errors += errors;
            figures.latencies.extend(latencies);
        }
    }
    figures.elapsed = started.elapsed();
    figures.latencies.sort();
    figures
}

/// Sends `request(n)` `per_second` times a second for `duration` whatever the
/// answers' pace (an open loop: a slow answer does not slow the arrivals).
pub async fn paced<F, Fut>(per_second: u32, duration: Duration, request: F) -> Figures
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    let mut sent = Vec::new();
    let mut n = 0;
    while started.elapsed() < duration {
        pace.tick().await;
        let answer = request(n);
        n += 1;
        sent.push(tokio::spawn(async move {
            let at = Instant::now();
            answer.await.then(|| at.elapsed())
        }));
    }
    let mut figures = Figures {
        requests: 0,
        errors: 0,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    };
    for task in sent {
        match task.await {
            Ok(Some(latency)) => {
                figures.requests += 1;
                figures.latencies.push(latency);
            }
            _ => figures.errors += 1,
        }
    }
    figures.latencies.sort();
    figures
}

/// CPU time a process has used so far (user and system).
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // utime and stime are fields 14 and 15; the name (field 2) may hold spaces.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s.
    Duration::from_millis(ticks * 10)
}

/// A process's resident memory now and at its peak so far, in MiB.
pub fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
}

/// The peak RSS so far of the stack's first api and first worker, in MiB.
pub fn peak_rss(stack: &Stack) -> (u64, u64) {
    let peak = |pid: Option<u32>| pid.map_or(0, |pid| rss_mib(pid).1);
    (
        peak(stack.apis.first().and_then(|a| a.pid())),
        peak(stack.workers.first().and_then(|w| w.pid())),
    )
}

/// The processes running a program (by its `comm` name).
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// CPU used so far by every process a message goes through, by role: MariaDB,
/// the workers, RabbitMQ, the apis, and this process (the load generator and
/// the fake model).
pub struct CpuUse(Vec<(&'static str, Duration)>);

impl CpuUse {
    pub fn now(stack: &Stack) -> Self {
        let sum = |pids: Vec<u32>| pids.into_iter().map(cpu_time).sum::<Duration>();
        Self(vec![
            ("mariadbd", sum(pids_named("mariadbd"))),
            (
                "worker",
                sum(stack.workers.iter().filter_map(|w| w.pid()).collect()),
            ),
            ("RabbitMQ", sum(pids_named("beam.smp"))),
            (
                "api",
                sum(stack.apis.iter().filter_map(|a| a.pid()).collect()),
            ),
            ("bench", cpu_time(std::process::id())),
        ])
    }

    /// The CPU used since `before`, per message, summed and by process:
    /// `8.61 ms (mariadbd 3.84, worker 2.10, …)`.
    pub fn per_message_since(&self, before: &CpuUse, messages: usize) -> String {
        let per_message = |used: Duration| used.as_secs_f64() * 1000.0 / messages.max(1) as f64;
        let parts: Vec<(&str, f64)> = before
            .0
            .iter()
            .zip(&self.0)
            .map(|((name, b), (_, a))| (*name, per_message(a.saturating_sub(*b))))
            .collect();
        let total: f64 = parts.iter().map(|(_, ms)| ms).sum();
        let split = parts
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{total:.2} ms ({split})")
    }
}

/// Statements MariaDB has executed so far, from every client (`Questions`):
/// what a message costs the database is mostly how many it takes.
pub async fn statements(pool: &sqlx::MySqlPool) -> anyhow::Result<u64> {
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Questions'")
        .fetch_one(pool)
        .await?;
    Ok(value.parse()?)
}

/// `18.4 statements`: those executed since `before`, per message.
pub async fn statements_per_message(
    pool: &sqlx::MySqlPool,
    before: u64,
    messages: usize,
) -> anyhow::Result<String> {
    let executed = statements(pool).await?.saturating_sub(before);
    Ok(format!(
        "{:.1} statements",
        executed as f64 / messages.max(1) as f64
    ))
}
