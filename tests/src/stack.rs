//! The real binaries as child processes, against the real MariaDB and RabbitMQ, with
//! a fake model: what a client (or an operator) would see.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::process::{Child, Command};

use crate::{Client, FakeOpenAi, Isolation, TcpProxy};

use events::config::ExposeSecret;

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub auth_mode: &'static str,
    pub apis: usize,
    pub workers: usize,
    /// Extra environment for every process (overrides the defaults).
    pub env: Vec<(String, String)>,
    /// Reach RabbitMQ / the database through a [`TcpProxy`] the test controls.
    pub proxy_broker: bool,
    pub proxy_database: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            auth_mode: "strict",
            apis: 1,
            workers: 1,
            env: Vec::new(),
            proxy_broker: false,
            proxy_database: false,
        }
    }
}

pub struct Process {
    pub name: String,
    pub log: PathBuf,
    pub port: Option<u16>,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `KILL`, ...) with the system's `kill`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("{} already exited", self.name))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.success())
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Fields drop in order: processes first, then the proxies, and the isolation
/// (database and broker names) last, so a failed test still cleans up after itself.
pub struct Stack {
    pub apis: Vec<Process>,
    pub workers: Vec<Process>,
    pub broker_proxy: Option<TcpProxy>,
    pub database_proxy: Option<TcpProxy>,
    pub model: FakeOpenAi,
    pub options: StackOptions,
    log_dir: PathBuf,
    pub isolation: Isolation,
}

/// What a `worker replay ...` run printed, and whether it succeeded.
#[derive(Debug, Clone)]
pub struct ReplayRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `CHATBOT_BIN_DIR` runs the system tests against other builds of the binaries,
/// e.g. an older commit's, to see a test fail before its fix. Those binaries then
/// create and migrate the test database themselves, with their own migrations.
pub fn other_binaries() -> Option<PathBuf> {
    std::env::var_os("CHATBOT_BIN_DIR").map(PathBuf::from)
}

/// Where cargo put the binaries: beside this executable, or beside the `deps`
/// folder when this is a test (or in `CHATBOT_BIN_DIR`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = other_binaries() {
        return Ok(dir.join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("unexpected executable location {exe:?}"))?;
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{path:?} is missing: run the tests with scripts/test.sh, which builds the binaries first"
    );
    Ok(path)
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let isolation = Isolation::new();
        let model = FakeOpenAi::start().await?;
        let log_dir = std::env::temp_dir()
            .join("chatbot-tests")
            .join(&isolation.bus.namespace);
        std::fs::create_dir_all(&log_dir)?;
        // Create and migrate the database directly, so that processes started
        // behind a proxy do not depend on it for that.
        if other_binaries().is_none() {
            isolation.migrated_pool().await?.close().await;
        }
        let broker_proxy = match options.proxy_broker {
            true => Some(TcpProxy::start("127.0.0.1:5672").await?),
            false => None,
        };
        let database_proxy = match options.proxy_database {
            true => Some(TcpProxy::start("127.0.0.1:3306").await?),
            false => None,
        };
        let mut stack = Self {
            broker_proxy,
            database_proxy,
            isolation,
            model,
            options: options.clone(),
            apis: Vec::new(),
            workers: Vec::new(),
            log_dir,
        };
        for _ in 0..options.apis {
            stack.spawn_api().await?;
        }
        for _ in 0..options.workers {
            stack.spawn_worker().await?;
        }
        Ok(stack)
    }

    /// The environment every process gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            (
                "DATABASE_URL",
                self.isolation.database.url.expose_secret().to_string(),
            ),
            (
                "AMQP_URL",
                self.isolation.bus.url.expose_secret().to_string(),
            ),
            ("BUS_NAMESPACE", self.isolation.bus.namespace.clone()),
            ("AUTH_MODE", self.options.auth_mode.to_string()),
            ("JWT_SECRET", "system-test-secret".to_string()),
            // 32 bytes, base64: the key-encryption key of the sealed texts.
            (
                "DATA_KEY_ENCRYPTION_KEY",
                crate::TEST_KEK_BASE64.to_string(),
            ),
            ("OPENAI_API_KEY", "test-key".to_string()),
            ("OPENAI_BASE_URL", self.model.base_url.clone()),
            ("OPENAI_MODEL", "fake-model".to_string()),
            ("MODEL_RETRY_BASE_MS", "50".to_string()),
            ("DB_MAX_CONNECTIONS", "8".to_string()),
            ("AMQP_HEARTBEAT_SECS", "5".to_string()),
            ("REPLY_WAIT_SECS", "20".to_string()),
            ("RUST_LOG", events::telemetry::DEFAULT_FILTER.to_string()),
            ("NO_COLOR", "1".to_string()),
            // Tests log in (and fail to) far more often than a person: the rate
            // limits' own tests turn them on.
            ("LOGIN_FAILURES_PER_MINUTE", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(proxy) = &self.broker_proxy {
            env.push((
                "AMQP_URL".into(),
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
            ));
        }
        if let Some(proxy) = &self.database_proxy {
            let url = self
                .isolation
                .database
                .url
                .expose_secret()
                .replace(":3306/", &format!(":{}/", proxy.port));
            env.push(("DATABASE_URL".into(), url));
        }
        for (key, value) in &self.options.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }

    fn spawn(
        &self,
        binary_name: &str,
        name: &str,
        extra: &[(String, String)],
    ) -> anyhow::Result<(Child, PathBuf)> {
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary(binary_name)?)
            .envs(self.env())
            .envs(extra.iter().cloned())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        Ok((child, log))
    }

    /// Starts `binary_name` (`api` or `worker`) with the stack's environment plus
    /// `env`, without waiting for it to become ready (to watch how it starts).
    pub fn start_process(
        &self,
        binary_name: &str,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let extra: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let port = extra
            .iter()
            .find(|(k, _)| k == "BIND_ADDR")
            .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok());
        let (child, log) = self.spawn(binary_name, name, &extra)?;
        Ok(Process {
            name: name.to_string(),
            log,
            port,
            child,
        })
    }

    /// Starts another api process and waits until it is ready.
    pub async fn spawn_api(&mut self) -> anyhow::Result<usize> {
        self.spawn_api_with(&[]).await
    }

    /// Starts another api process with extra environment (e.g. another `AUTH_MODE`).
    pub async fn spawn_api_with(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let port = free_port()?;
        let name = format!("api-{}", self.apis.len());
        let mut extra: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        extra.push(("BIND_ADDR".into(), format!("127.0.0.1:{port}")));
        let (child, log) = self.spawn("api", &name, &extra)?;
        let mut process = Process {
            name,
            log,
            port: Some(port),
            child,
        };
        let client = Client::new(format!("http://127.0.0.1:{port}"));
        let ready = client
            .wait_for_ok("/readyz", None, Duration::from_secs(30))
            .await;
        if let Err(e) = ready {
            let _ = process.child.start_kill();
            anyhow::bail!("{e}; its log:\n{}", process.log_text());
        }
        self.apis.push(process);
        Ok(self.apis.len() - 1)
    }

    /// Starts another worker process and waits until it consumes.
    pub async fn spawn_worker(&mut self) -> anyhow::Result<usize> {
        self.spawn_worker_with(&[]).await
    }

    /// Starts another worker process with extra environment.
    pub async fn spawn_worker_with(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        let name = format!("worker-{}", self.workers.len());
        let extra: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, log) = self.spawn("worker", &name, &extra)?;
        let process = Process {
            name,
            log,
            port: None,
            child,
        };
        let consuming = crate::eventually(Duration::from_secs(30), "the worker to consume", || {
            let text = process.log_text();
            async move { Ok(text.contains("consuming").then_some(())) }
        })
        .await;
        if let Err(e) = consuming {
            anyhow::bail!("{e}; its log:\n{}", process.log_text());
        }
        self.workers.push(process);
        Ok(self.workers.len() - 1)
    }

    /// Runs `worker replay <args>` against this stack's database.
    pub async fn replay(&self, args: &[&str]) -> anyhow::Result<ReplayRun> {
        self.replay_with(args, &[]).await
    }

    /// [`Stack::replay`] with some of the environment changed.
    pub async fn replay_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ReplayRun> {
        let output = Command::new(binary("worker")?)
            .arg("replay")
            .args(args)
            .envs(self.env())
            .envs(env.iter().copied())
            .output()
            .await?;
        Ok(ReplayRun {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// A client of the `i`th api.
    pub fn client(&self, i: usize) -> Client {
        let port = self.apis.get(i).and_then(|a| a.port).unwrap_or(0);
        Client::new(format!("http://127.0.0.1:{port}"))
    }

    /// The api's base URL with a trailing slash, as the app stores it.
    pub fn app_base(&self) -> String {
        format!("{}/", self.client(0).base)
    }

    pub fn pool(&self) -> anyhow::Result<MySqlPool> {
        self.isolation.pool()
    }

    /// Stops every process, then drops the database and the broker topology.
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        for process in self.apis.iter_mut().chain(self.workers.iter_mut()) {
            let _ = process.child.kill().await;
        }
        self.isolation.teardown().await?;
        let _ = std::fs::remove_dir_all(&self.log_dir);
        Ok(())
    }
}
