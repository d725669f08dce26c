//! `docker-compose.yml` stays true to the binaries (issue 21, item 8): every
//! command it runs is one the binaries accept, every variable it sets is one
//! the code reads, the api and workers share one image, each of our services
//! has a healthcheck, and the Grafana dashboard uses only metrics the binaries
//! record. (`.ci/run` also validates the file with `docker-compose config`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> anyhow::Result<Value> {
    Ok(serde_norway::from_str(&std::fs::read_to_string(
        root().join("docker-compose.yml"),
    )?)?)
}

/// Our services: those that run the project's image.
fn ours(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, service)| service["command"].is_sequence())
        .filter_map(|(name, service)| Some((name.as_str()?.to_string(), service)))
        .collect()
}

/// Every source file of the binaries and their library, as one text.
fn sources() -> anyhow::Result<String> {
    fn walk(dir: &Path, text: &mut String) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, text)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path)?);
            }
        }
        Ok(())
    }
    let mut text = String::new();
    for krate in ["api", "worker", "events"] {
        walk(&root().join(krate).join("src"), &mut text)?;
    }
    Ok(text)
}

#[test]
fn the_api_and_workers_share_one_image_and_each_has_a_healthcheck() -> anyhow::Result<()> {
    let compose = compose()?;
    let services = ours(&compose);
    assert_eq!(services.len(), 3, "api, worker and memory");
    let images: BTreeSet<_> = services
        .iter()
        .map(|(_, s)| s["image"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(images.len(), 1, "one image for all: {images:?}");
    let builds = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .count();
    assert_eq!(builds, 1, "the image is built once");
    for (name, service) in services {
        let test = service["healthcheck"]["test"].as_sequence();
        assert!(
            test.is_some_and(|t| t.len() > 1),
            "{name} has no healthcheck"
        );
    }
    Ok(())
}

#[test]
fn every_variable_compose_sets_is_one_the_code_reads() -> anyhow::Result<()> {
    let compose = compose()?;
    let code = sources()?;
    let mut checked = 0;
    for (name, service) in ours(&compose) {
        for (key, _) in service["environment"].as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            let read = if key == "RUST_LOG" {
                // tracing-subscriber's default filter variable.
                code.contains("EnvFilter::try_from_default_env")
            } else {
                code.contains(&format!("\"{key}\""))
            };
            assert!(read, "{name} sets {key}, which no code reads");
            checked += 1;
        }
    }
    assert!(checked >= 30, "read {checked} settings");
    Ok(())
}

/// Starts `command` with the database out of reach: a command the binary
/// accepts waits for the database; one it refuses ends at once with a usage
/// error.
async fn accepted(command: &[String]) -> anyhow::Result<bool> {
    let binary = system_tests::stack::binary(&command[0])?;
    let mut child = tokio::process::Command::new(binary)
        .args(&command[1..])
        .env("DATABASE_URL", "mysql://root@127.0.0.1:1/unreachable")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ended = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    let _ = child.kill().await;
    Ok(ended.is_err())
}

#[tokio::test]
async fn every_command_compose_runs_is_one_the_binaries_accept() -> anyhow::Result<()> {
    let compose = compose()?;
    for (name, service) in ours(&compose) {
        let command: Vec<String> = service["command"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|part| part.as_str().map(str::to_string))
            .collect();
        assert!(
            accepted(&command).await?,
            "{name}'s command {command:?} is refused"
        );
    }
    let wrong = ["worker", "--roles", "everything"].map(String::from);
    assert!(!accepted(&wrong).await?, "a wrong command must be refused");
    Ok(())
}

#[test]
fn the_dashboard_uses_only_metrics_the_binaries_record() -> anyhow::Result<()> {
    let recorded = std::fs::read_to_string(root().join("events/src/metrics.rs"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("deploy/grafana/dashboards/chatbot.json"),
    )?)?;
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let metric = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
                // Every name with an underscore is a metric, but PromQL's own.
                if !metric.contains('_') || metric == "histogram_quantile" {
                    continue;
                }
                assert!(
                    recorded.contains(&format!("\"{metric}\"")),
                    "the dashboard uses {metric}, which nothing records"
                );
                used.insert(metric.to_string());
            }
        }
    }
    assert!(used.len() >= 15, "the dashboard shows {used:?}");
    Ok(())
}

/// Runs a service's healthcheck command here, against `port` instead of the
/// port the container would have.
async fn healthy(service: &Value, container_port: u16, port: u16) -> anyhow::Result<bool> {
    let test: Vec<String> = service["healthcheck"]["test"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|part| part.as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(test.first().map(String::as_str) == Some("CMD"), "{test:?}");
    let args: Vec<String> = test[2..]
        .iter()
        .map(|a| a.replace(&format!("/{container_port}"), &format!("/{port}")))
        .collect();
    let status = tokio::process::Command::new(&test[1])
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

#[tokio::test]
async fn the_healthchecks_pass_on_a_live_stack_and_fail_without_it() -> anyhow::Result<()> {
    let compose = compose()?;
    let services = &compose["services"];
    let mut stack = system_tests::Stack::start(system_tests::StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await?;
    let metrics_port = system_tests::free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    stack
        .spawn_worker_with(&[("METRICS_ADDR", metrics.as_str())])
        .await?;
    let api_port = stack.apis[0].port.unwrap_or_default();
    assert!(healthy(&services["api"], 8000, api_port).await?);
    for worker in ["worker", "memory"] {
        assert!(healthy(&services[worker], 9100, metrics_port).await?);
    }
    stack.teardown().await?;
    assert!(!healthy(&services["api"], 8000, api_port).await?);
    assert!(!healthy(&services["worker"], 9100, metrics_port).await?);
    Ok(())
}
