//! CoAP over TCP (RFC 8323): the connection loop shared by the plain listener (development mode
//! only) and the secure endpoint ([`crate::tls_server`]): one task per connection, framing and
//! signalling in the sans-IO [`TcpConnection`], requests served through [`Agent::serve`].

use std::rc::Rc;
use std::time::Duration;

use coap_lite::{MessageClass, Packet};
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::server::Peer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::server::Agent;

/// Largest message we accept. Our representations are small; a batch of `/oic/res` for a
/// board with a few dozen resources stays well under it.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// Connections served at once; more are refused so a flood cannot exhaust memory.
pub const MAX_CONNECTIONS: usize = 64;

/// Bytes read from the socket at a time. The decoder sees each chunk before the next is read,
/// so a frame declaring a huge length is refused after at most this much.
const READ_CHUNK: usize = 4096;

/// Serves the plain listener (development mode only, `--insecure-dev`).
pub async fn serve(listener: TcpListener, agent: Rc<Agent>, shutdown: watch::Receiver<bool>) {
    let live = Rc::new(std::cell::Cell::new(0usize));
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if live.get() >= MAX_CONNECTIONS {
            warn!(%peer, "too many connections; refusing");
            drop(stream);
            continue;
        }
        live.set(live.get() + 1);
        let agent = agent.clone();
        let live = live.clone();
        let shutdown = shutdown.clone();
        tokio::task::spawn_local(async move {
            debug!(%peer, "connection opened");
            // OCF-PROTOCOL.md §7.7: without TCP_NODELAY the last responses of a burst wait for
            // the peer's delayed ACK.
            let _ = stream.set_nodelay(true);
            let (id, outbox) = agent.open_stream();
            let result = run_connection(stream, &agent, id, outbox, shutdown, |packet| {
                agent.serve(Peer::Tcp(id), packet).unwrap_or_default()
            })
            .await;
            if let Err(e) = result {
                debug!(%peer, "connection ended: {e}");
            }
            live.set(live.get() - 1);
        });
    }
}

/// Runs one stream connection (plain TCP or TLS) registered as `id` with the agent: RFC 8323
/// framing and signalling in the sans-IO [`TcpConnection`], requests answered by `serve`,
/// notifications from `outbox` written as they come. Ends when the peer closes, the agent drops
/// the connection (its `outbox` ends), or at shutdown (with a Release); then the agent forgets
/// the connection and its observations.
pub async fn run_connection<S, F>(
    mut stream: S,
    agent: &Agent,
    id: u64,
    mut outbox: mpsc::Receiver<Packet>,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&Packet) -> Packet,
{
    let mut conn = TcpConnection::new(MAX_MESSAGE_SIZE as u32);
    let result = async {
        // RFC 8323 §5.3: both sides send a CSM first.
        stream.write_all(&conn.start()).await?;
        stream.flush().await?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    let mut out = Vec::new();
                    let mut close = None;
                    for event in conn.receive(&buf[..n]) {
                        match event {
                            ConnEvent::Message(packet) => {
                                if let MessageClass::Request(_) = packet.header.code {
                                    let mut response = serve(&packet);
                                    conn.fit(&packet, &mut response);
                                    match conn.encode(&response) {
                                        Ok(bytes) => out.extend(bytes),
                                        Err(e) => warn!(connection = id, "cannot send response: {e}"),
                                    }
                                }
                                // Responses to requests we never sent are ignored.
                            }
                            ConnEvent::Transmit(bytes) => out.extend(bytes),
                            ConnEvent::Close { reason } => {
                                close = Some(reason);
                                break;
                            }
                            _ => {}
                        }
                    }
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                    }
                    agent.flush_notifications();
                    if let Some(reason) = close {
                        debug!(connection = id, "closing: {reason}");
                        return Ok(());
                    }
                }
                packet = outbox.recv() => {
                    let Some(mut packet) = packet else {
                        // The agent dropped us (stuck observer, or closed by the security).
                        return Ok(());
                    };
                    conn.fit(&Packet::new(), &mut packet);
                    match conn.encode(&packet) {
                        Ok(bytes) => {
                            stream.write_all(&bytes).await?;
                            stream.flush().await?;
                        }
                        Err(e) => warn!(connection = id, "cannot send notification: {e}"),
                    }
                }
                _ = shutdown.changed() => {
                    // RFC 8323 §5.5: tell the peer we are going away before closing.
                    let _ = stream.write_all(&conn.release("shutting down")).await;
                    let _ = stream.flush().await;
                    return Ok(());
                }
            }
        }
    }
    .await;
    agent.close_stream(id);
    let _ = stream.shutdown().await;
    result
}

pub fn log_listening(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!("coap+tcp listening on {addr}");
    }
}
