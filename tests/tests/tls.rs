//! TLS to the database and the broker (issue 21, item 1), with certificates the
//! test makes (`openssl`):
//! - the database: a throwaway TLS-only `mariadbd` (`require_secure_transport`)
//!   with its own data directory and port;
//! - the broker: the local RabbitMQ behind a TLS listener (`socat`), so that the
//!   client's side of `amqps://` (the handshake, the CA, the host name) is real
//!   while the shared broker stays as other tests need it.
//!
//! The right CA is accepted; a wrong CA, a wrong host name and (for the
//! database) plain TCP are refused, with an error that names the setting.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use system_tests::stack::Process;
use system_tests::{free_port, Client, Stack, StackOptions};

/// A CA, a server certificate for `localhost` signed by it, and another CA.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let done = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            anyhow::ensure!(done.success(), "openssl {args:?} failed");
            Ok(())
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN={ca}"),
            ])?;
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\n")?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS-only MariaDB of its own, with a user `app` (password `secret`).
struct TlsDatabase {
    server: tokio::process::Child,
    dir: PathBuf,
    port: u16,
}

impl TlsDatabase {
    async fn start(certificates: &Certificates) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("mariadb-tls-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let installed = tokio::process::Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(installed.success(), "mariadb-install-db failed");
        let port = free_port()?;
        let socket = dir.join("mysqld.sock");
        let server = tokio::process::Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
            ])
            .arg(format!("--ssl-ca={}", certificates.path("ca.pem")))
            .arg(format!("--ssl-cert={}", certificates.path("server.pem")))
            .arg(format!("--ssl-key={}", certificates.path("server.key")))
            .arg("--require-secure-transport=ON")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let database = Self { server, dir, port };
        let sql = "CREATE USER 'app'@'%' IDENTIFIED BY 'secret'; GRANT ALL ON *.* TO 'app'@'%';";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let made = tokio::process::Command::new("mariadb")
                .args(["--no-defaults", "-uroot"])
                .arg(format!("--socket={}", socket.display()))
                .args(["-e", sql])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await?;
            if made.success() {
                return Ok(database);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the TLS MariaDB did not start: {}",
                std::fs::read_to_string(database.dir.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "mysql://app:secret@{host}:{}/chatbot_tls?{query}",
            self.port
        )
    }
}

impl Drop for TlsDatabase {
    fn drop(&mut self) {
        let _ = self.server.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an api with `env`; `Ok` once it is ready.
async fn api(stack: &Stack, name: &str, env: &[(&str, &str)]) -> anyhow::Result<(Process, Client)> {
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let mut all = vec![("BIND_ADDR", bind.as_str())];
    all.extend_from_slice(env);
    let process = stack.start_process("api", name, &all)?;
    let client = Client::new(format!("http://{bind}"));
    client
        .wait_for_ok("/readyz", None, Duration::from_secs(30))
        .await?;
    Ok((process, client))
}

/// Starts an api that must not come up; returns its log once it says `expected`.
async fn refused(
    stack: &Stack,
    name: &str,
    env: &[(&str, &str)],
    expected: &str,
) -> anyhow::Result<String> {
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let mut all = vec![("BIND_ADDR", bind.as_str())];
    all.extend_from_slice(env);
    let process = stack.start_process("api", name, &all)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = process.log_text();
        if log.contains(expected) {
            let ready = Client::new(format!("http://{bind}"))
                .get("/readyz", None)
                .await;
            anyhow::ensure!(
                !ready.is_ok_and(|r| r.status == 200),
                "{name} is ready anyway"
            );
            let _ = process.signal("KILL");
            return Ok(log);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name}: no {expected:?} in its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first line of `log` that holds `needle`, shortened for a report.
fn first_line_with(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .chars()
        .take(240)
        .collect()
}

#[tokio::test]
async fn the_database_over_tls_takes_the_right_ca_and_refuses_the_rest() -> anyhow::Result<()> {
    let certificates = Certificates::make()?;
    let database = TlsDatabase::start(&certificates).await?;
    let stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let ca = certificates.path("ca.pem");

    // The right CA, the certificate's host name: verified to the name.
    let url = database.url(
        "localhost",
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    );
    let (mut strict, client) = api(&stack, "verify-identity", &[("DATABASE_URL", &url)]).await?;
    let (user, _, _) = client.signup("encrypted", "pass word").await?;
    assert!(user > 0, "written over TLS");
    strict.signal("TERM")?;
    strict.wait(Duration::from_secs(15)).await?;
    // Encrypted without verification, as REQUIRED asks.
    let url = database.url("127.0.0.1", "ssl-mode=REQUIRED");
    let (mut required, client) = api(&stack, "required", &[("DATABASE_URL", &url)]).await?;
    client.login("encrypted", "pass word").await?;
    required.signal("TERM")?;
    required.wait(Duration::from_secs(15)).await?;

    let other = certificates.path("other-ca.pem");
    let cases = [
        (
            "wrong-ca",
            database.url("localhost", &format!("ssl-mode=VERIFY_CA&ssl-ca={other}")),
        ),
        (
            "wrong-host",
            database.url(
                "127.0.0.1",
                &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
            ),
        ),
        ("plain", database.url("127.0.0.1", "ssl-mode=DISABLED")),
    ];
    for (name, url) in cases {
        let log = refused(
            &stack,
            name,
            &[("DATABASE_URL", &url)],
            "connection was refused",
        )
        .await?;
        assert!(
            log.contains("ssl-mode") && log.contains("ssl-ca"),
            "{name}: {log}"
        );
        println!(
            "{name}: {}",
            first_line_with(&log, "connection was refused")
        );
    }
    drop(database);
    stack.teardown().await
}

/// The local RabbitMQ behind a TLS listener on `port`, with `certificates`'
/// server certificate.
fn tls_listener(certificates: &Certificates, port: u16) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            certificates.path("server.pem"),
            certificates.path("server.key")
        ))
        .arg("TCP:127.0.0.1:5672")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start socat ({e}): apt-get install socat"))
}

#[tokio::test]
async fn the_broker_over_tls_takes_the_right_ca_and_refuses_the_rest() -> anyhow::Result<()> {
    let certificates = Certificates::make()?;
    let port = free_port()?;
    let _listener = tls_listener(&certificates, port)?;
    let mut stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let ca = certificates.path("ca.pem");
    let good = format!("amqps://guest:guest@localhost:{port}/%2f");
    let tls = [("AMQP_URL", good.as_str()), ("AMQP_CA_FILE", ca.as_str())];

    // An api and a worker over amqps: a message goes through and is answered.
    let (_api, client) = api(&stack, "amqps-api", &tls).await?;
    let worker = stack.start_process("worker", "amqps-worker", &tls)?;
    stack.workers.push(worker);
    let (_, token, bot) = client.user_with_bot("secure").await?;
    let reply = client
        .post_json(
            "/chat/new_chat",
            &serde_json::json!({ "chatbot_id": bot, "input": "over TLS" }),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body["data"]
        .as_str()
        .is_some_and(|r| r.ends_with("to: over TLS")));

    let other = certificates.path("other-ca.pem");
    let wrong_host = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let cases = [
        ("wrong-ca", good.clone(), other),
        ("wrong-host", wrong_host, ca.clone()),
    ];
    for (name, url, ca_file) in cases {
        let env = [
            ("AMQP_URL", url.as_str()),
            ("AMQP_CA_FILE", ca_file.as_str()),
        ];
        let log = refused(&stack, name, &env, "TLS to the message broker failed").await?;
        assert!(
            log.contains("AMQP_CA_FILE") && log.contains("AMQP_URL"),
            "{name}: {log}"
        );
        println!(
            "{name}: {}",
            first_line_with(&log, "TLS to the message broker failed")
        );
    }
    stack.teardown().await
}
