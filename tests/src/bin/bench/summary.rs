//! The one table every run ends with, in Markdown, for the README.

use std::time::Duration;

use crate::measure::Figures;

/// One scenario's row.
#[derive(Default)]
pub struct Row {
    pub scenario: String,
    pub load: String,
    pub throughput: String,
    /// p50, p90, p99 and max, where the scenario times requests.
    pub latency: Option<[Duration; 4]>,
    pub errors: usize,
    /// CPU per message by process, where the scenario sends messages.
    pub cpu: String,
    /// Peak RSS of the api and of the worker, in MiB.
    pub rss: Option<(u64, u64)>,
}

impl Row {
    pub fn timed(scenario: &str, load: &str, figures: &Figures, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            load: load.into(),
            throughput: format!("{:.0} {unit}", figures.per_second()),
            latency: Some([0.5, 0.9, 0.99, 1.0].map(|p| figures.percentile(p))),
            errors: figures.errors,
            ..Self::default()
        }
    }
}

#[derive(Default)]
pub struct Summary {
    rows: Vec<Row>,
}

impl Summary {
    pub fn add(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!();
        println!(
            "| scenario | load | throughput | p50 | p90 | p99 | max | errors | CPU per message | peak RSS api / worker |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        for row in &self.rows {
            let latency = match row.latency {
                Some(l) => l.map(ms).join(" | "),
                None => "– | – | – | –".into(),
            };
            let rss = row.rss.map_or("–".into(), |(api, worker)| {
                format!("{api} / {worker} MiB")
            });
            let cpu = if row.cpu.is_empty() { "–" } else { &row.cpu };
            println!(
                "| {} | {} | {} | {latency} | {} | {cpu} | {rss} |",
                row.scenario, row.load, row.throughput, row.errors
            );
        }
    }
}
