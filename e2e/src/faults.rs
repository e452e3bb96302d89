//! What the fault suite needs beyond a cluster: a way to restart the API server it was given,
//! a proxy that can cut the operator off from it, and an operator built with its crash points.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{build_operator, unique};

/// The variable naming the command that restarts the API server: it is run with the outage
/// in seconds as its last argument, kills the API server (SIGKILL), waits that long, starts it
/// again with the same flags, and returns once it answers `/readyz`.
pub const RESTART_VARIABLE: &str = "FT_E2E_RESTART_APISERVER";

/// The variable naming the command that compacts etcd's history at its current revision, so
/// that watches resumed from an older resourceVersion get 410 Gone.
pub const COMPACT_VARIABLE: &str = "FT_E2E_COMPACT_ETCD";

/// The command in `variable`, or why a test needing it cannot run.
pub fn command_from(variable: &str, what: &str) -> Result<String, String> {
    match std::env::var(variable) {
        Ok(command) if !command.trim().is_empty() => Ok(command),
        _ => Err(format!(
            "{variable} is not set: it names a command that {what}"
        )),
    }
}

/// Kills the API server, waits `outage`, starts it again: returns when it answers again.
pub fn restart_api_server(command: &str, outage: Duration) -> anyhow::Result<Instant> {
    // What the command prints goes to stderr: the benchmark's stdout is its report.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} {}", outage.as_secs()))
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {RESTART_VARIABLE}: {command}"))?;
    if !status.success() {
        bail!("{RESTART_VARIABLE} ({command}) failed: {status}");
    }
    Ok(Instant::now())
}

/// Runs the compaction command.
pub fn compact_etcd(command: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {COMPACT_VARIABLE}: {command}"))?;
    if !status.success() {
        bail!("{COMPACT_VARIABLE} ({command}) failed: {status}");
    }
    Ok(())
}

/// A TCP proxy in front of the API server, for one client: cutting it drops every open
/// connection and refuses new ones, as a lost network or a firewall would. TLS passes through.
pub struct Proxy {
    pub address: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    connections: Vec<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state: Arc<Mutex<ProxyState>> = Arc::default();
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                    if state.cut {
                        drop(inbound);
                        continue;
                    }
                    state.connections.retain(|c| !c.is_finished());
                    state.connections.push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            }
        });
        Ok(Proxy {
            address,
            state,
            accept,
        })
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.cut = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).cut = false;
    }

    /// A copy of `KUBECONFIG` whose clusters are reached through this proxy.
    pub fn kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let original = std::env::var("KUBECONFIG").context("KUBECONFIG")?;
        let text = std::fs::read_to_string(&original)?;
        let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
        for cluster in config["clusters"].as_array_mut().into_iter().flatten() {
            cluster["cluster"]["server"] = format!("https://{}", self.address).into();
        }
        let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("ft-e2e-proxy")));
        std::fs::write(&path, serde_saphyr::to_string(&config)?)?;
        Ok(path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Where the API server of `KUBECONFIG` listens (its current context's cluster).
pub fn api_server_address() -> anyhow::Result<SocketAddr> {
    let original = std::env::var("KUBECONFIG").context("KUBECONFIG")?;
    let text = std::fs::read_to_string(&original)?;
    let config: serde_json::Value = serde_saphyr::from_str(&text)?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("no server in KUBECONFIG")?;
    let authority = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    use std::net::ToSocketAddrs;
    authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))
}

/// `ft-operator` built with its crash points (`--features failpoints`), beside the plain one:
/// `FT_OPERATOR_FAILPOINTS_BIN`, or built from this workspace.
pub fn failpoints_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("FT_OPERATOR_FAILPOINTS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let built = build_operator(&["--features", "failpoints"])?;
    let with_points = built.with_file_name("ft-operator-failpoints");
    std::fs::copy(&built, &with_points)?;
    // Put the plain binary back where the other tests find it.
    build_operator(&[])?;
    Ok(with_points)
}
