//! A TCP proxy that a test can cut, restore or freeze, to take the broker or the
//! database away from the processes behind it without touching the real service
//! (which other tests, running in parallel, keep using).
//!
//! - `cut`: closes every connection and refuses new ones (a broker or database that
//!   went down);
//! - `restore`: accepts and forwards again (it came back);
//! - `freeze`: existing connections stay open but nothing more gets through in
//!   either direction, the way a dead peer behind a NAT looks; new connections
//!   work normally;
//! - `stall`: existing connections stay open and nothing is read from either
//!   side, so the peers' TCP buffers fill and their writes block: a broker that
//!   stops reading (a memory alarm) looks so.
//!
//! It also counts the bytes it forwards, so a test can see how much a process
//! talks to the service behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    /// Connections with a generation at or below this are closed...
    cut_upto: u64,
    /// ... and new ones refused while this is set.
    refusing: bool,
    /// Connections with a generation at or below this are blackholed.
    frozen_upto: u64,
    /// Connections with a generation at or below this are no longer read.
    stalled_upto: u64,
}

pub struct TcpProxy {
    pub port: u16,
    control: watch::Sender<Control>,
    generation: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (control, watcher) = watch::channel(Control {
            cut_upto: 0,
            refusing: false,
            frozen_upto: 0,
            stalled_upto: 0,
        });
        let generation = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let target = target.to_string();
        let task = tokio::spawn({
            let generation = generation.clone();
            let forwarded = forwarded.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if watcher.borrow().refusing {
                        drop(inbound);
                        continue;
                    }
                    let id = generation.fetch_add(1, Ordering::SeqCst) + 1;
                    let watcher = watcher.clone();
                    let target = target.clone();
                    let forwarded = forwarded.clone();
                    tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(&target).await {
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::join!(
                                pump(ri, wo, watcher.clone(), id, forwarded.clone()),
                                pump(ro, wi, watcher, id, forwarded)
                            );
                        }
                    });
                }
            }
        });
        Ok(Self {
            port,
            control,
            generation,
            forwarded,
            task,
        })
    }

    pub fn cut(&self) {
        let now = self.generation.load(Ordering::SeqCst);
        self.control.send_modify(|c| {
            c.cut_upto = now;
            c.refusing = true;
        });
    }

    pub fn restore(&self) {
        self.control.send_modify(|c| c.refusing = false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far, both ways.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    pub fn stall(&self) {
        let now = self.generation.load(Ordering::SeqCst);
        self.control.send_modify(|c| c.stalled_upto = now);
    }

    pub fn freeze(&self) {
        let now = self.generation.load(Ordering::SeqCst);
        self.control.send_modify(|c| c.frozen_upto = now);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut control: watch::Receiver<Control>,
    id: u64,
    forwarded: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if control.borrow().cut_upto >= id {
            return;
        }
        if control.borrow().stalled_upto >= id {
            // Read nothing more: wait for a cut (or the end).
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if control.borrow().frozen_upto >= id {
                        continue; // swallowed: the peer hears nothing
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    forwarded.fetch_add(n as u64, Ordering::SeqCst);
                }
            },
            changed = control.changed() => if changed.is_err() { return },
        }
    }
}
