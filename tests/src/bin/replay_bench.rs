//! Replay benchmark: seeds an event log in bulk through the event store, then times
//! the release `worker replay rebuild`, `verify` and a one-user `export` as whole
//! processes, and prints events/s, peak RSS and the log's size on disk. Run it
//! through `scripts/replay-bench.sh`; `REPLAY_BENCH_EVENTS` lists the log sizes
//! (default `100000,1000000`), so that memory can be compared across sizes;
//! `REPLAY_BENCH_BATCH` sets `--batch` (default 2000).

use std::time::{Duration, Instant};

use system_tests::seed::{seed_log, SeedPlan};
use system_tests::{binary, Isolation};

use events::config::ExposeSecret;

struct Run {
    elapsed: Duration,
    peak_rss_kib: u64,
    stdout_lines: usize,
}

/// Runs `worker replay <args>` against `database_url`, sampling its peak RSS.
async fn run_worker(database_url: &str, args: &[&str]) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary("worker")?)
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("DATA_KEY_ENCRYPTION_KEY", system_tests::TEST_KEK_BASE64)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let counting = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 1 << 16];
        let mut lines = 0;
        while let Ok(n) = stdout.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            lines += buffer[..n].iter().filter(|b| **b == b'\n').count();
        }
        lines
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(status.success(), "worker replay {args:?} failed: {status}");
    Ok(Run {
        elapsed: started.elapsed(),
        peak_rss_kib: peak,
        stdout_lines: counting.await?,
    })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::var("REPLAY_BENCH_EVENTS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let batch = std::env::var("REPLAY_BENCH_BATCH").unwrap_or_else(|_| "2000".into());
    // REPLAY_BENCH_SEALED=0: a log in the clear, as releases before sealing
    // wrote, to see what sealing costs a rebuild.
    let sealed = std::env::var("REPLAY_BENCH_SEALED").map_or(true, |v| v != "0");
    for events in sizes {
        let isolation = Isolation::new();
        let pool = isolation.migrated_pool().await?;
        let plan = SeedPlan {
            users: 1000,
            bots_per_user: 10,
            events,
            sealed,
        };
        let started = Instant::now();
        let mut last_print = Instant::now();
        let written = seed_log(&pool, plan, |n| {
            if last_print.elapsed() > Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!("seeding: {n} events");
            }
        })
        .await?;
        let seeding = started.elapsed();
        sqlx::query("ANALYZE TABLE events").execute(&pool).await?;
        let on_disk: i64 = sqlx::query_scalar(
            "SELECT CAST(DATA_LENGTH + INDEX_LENGTH AS SIGNED) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'events'",
        )
        .fetch_one(&pool)
        .await?;
        println!(
            "log: {written} events over {} conversations and {} users, texts {}, {:.0} MiB \
             on disk (events table with its indexes); seeded in {:.1} s",
            plan.users * plan.bots_per_user,
            plan.users,
            if sealed { "sealed" } else { "in the clear" },
            on_disk as f64 / 1048576.0,
            seeding.as_secs_f64()
        );
        let url = isolation.database.url.expose_secret();
        let rebuild = run_worker(url, &["rebuild", "--batch", &batch]).await?;
        let verify = run_worker(url, &["verify", "--batch", &batch]).await?;
        let export = run_worker(url, &["export", "--user", "1"]).await?;
        for (what, run, count) in [
            ("rebuild", &rebuild, written),
            ("verify", &verify, written),
            ("export --user 1", &export, export.stdout_lines as u64),
        ] {
            println!(
                "{what:>16}: {count:>8} events in {:>6.2} s = {:>7.0} events/s, peak RSS {:>5.1} MiB",
                run.elapsed.as_secs_f64(),
                count as f64 / run.elapsed.as_secs_f64(),
                run.peak_rss_kib as f64 / 1024.0
            );
        }
        isolation.teardown().await?;
    }
    Ok(())
}
