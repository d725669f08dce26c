//! The background tasks a process cannot do without (the outbox relay, the api's
//! feed, the worker's consumers, ...), watched as one set.
//!
//! Each is meant to run until shutdown. One that ends sooner, by returning or by
//! panicking, would leave the process looking healthy while it fails every request
//! that needs the task. So the first such end is logged with the task's name and
//! fires [`Supervisor::failed`]; the process then shuts down as it would on
//! SIGTERM and exits with an error, for its orchestrator to restart it.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// A background task ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the background task `{task}` {how} before shutdown")]
pub struct TaskEnded {
    pub task: &'static str,
    /// "stopped", "panicked" or "was cancelled".
    pub how: &'static str,
}

pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
    failed: CancellationToken,
}

impl Supervisor {
    /// Tasks that end after `shutdown` is cancelled are ending as they should.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            failed: CancellationToken::new(),
        }
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Cancelled as soon as a task ends before shutdown.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Watches the tasks until every one has ended; the error names the first
    /// that ended before shutdown.
    pub async fn watch(mut self) -> Result<(), TaskEnded> {
        let mut first = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let (id, how) = match joined {
                Ok((id, ())) => (id, "stopped"),
                Err(e) if e.is_panic() => (e.id(), "panicked"),
                Err(e) => (e.id(), "was cancelled"),
            };
            if self.shutdown.is_cancelled() || first.is_some() {
                if how != "stopped" {
                    let task = self.names.get(&id).copied().unwrap_or("unnamed");
                    tracing::warn!(
                        task,
                        how,
                        "a background task ended badly while the process stopped"
                    );
                }
                continue;
            }
            let ended = TaskEnded {
                task: self.names.get(&id).copied().unwrap_or("unnamed"),
                how,
            };
            tracing::error!(
                task = ended.task,
                how,
                "{ended}; shutting down, so that this process is restarted"
            );
            self.failed.cancel();
            first = Some(ended);
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn until(token: CancellationToken) {
        token.cancelled().await
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_are_no_failure() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("relay", until(shutdown.clone()));
        supervisor.spawn("feed", until(shutdown.clone()));
        let failed = supervisor.failed();
        shutdown.cancel();
        assert_eq!(supervisor.watch().await, Ok(()));
        assert!(!failed.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_panics_is_named_and_fails_the_process() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("relay", until(shutdown.clone()));
        supervisor.spawn("feed", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("the feed broke");
        });
        let failed = supervisor.failed();
        let watching = tokio::spawn(supervisor.watch());
        tokio::time::timeout(Duration::from_secs(5), failed.cancelled())
            .await
            .expect("the failure is reported at once");
        // The process then shuts the others down.
        shutdown.cancel();
        let ended = watching.await.expect("watch completes");
        assert_eq!(
            ended,
            Err(TaskEnded {
                task: "feed",
                how: "panicked"
            })
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_named() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("revocations", async {});
        supervisor.spawn("relay", until(shutdown.clone()));
        let failed = supervisor.failed();
        let watching = tokio::spawn(supervisor.watch());
        failed.cancelled().await;
        shutdown.cancel();
        let ended = watching.await.expect("watch completes");
        assert_eq!(
            ended.map_err(|e| e.to_string()),
            Err("the background task `revocations` stopped before shutdown".to_string())
        );
    }
}
