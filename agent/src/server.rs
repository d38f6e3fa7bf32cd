//! The agent's shared state on the single-threaded runtime: the device's resource tree and the
//! way back to every peer that may receive a notification.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use coap_lite::Packet;
use ocf::resource::{Device, Origin};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Notifications queued for one stream connection before it counts as stuck and is closed.
pub const STREAM_QUEUE: usize = 64;

pub struct Agent {
    pub device: RefCell<Device>,
    streams: RefCell<HashMap<u64, mpsc::Sender<Packet>>>,
    udp_v4: RefCell<Option<mpsc::Sender<(SocketAddr, Packet)>>>,
    udp_v6: RefCell<Option<mpsc::Sender<(SocketAddr, Packet)>>>,
    next_stream: RefCell<u64>,
    /// Where a device name set through `/oic/con` is kept.
    state_dir: RefCell<Option<std::path::PathBuf>>,
}

impl Agent {
    pub fn new(device: Device) -> Agent {
        Agent {
            device: RefCell::new(device),
            streams: RefCell::new(HashMap::new()),
            udp_v4: RefCell::new(None),
            udp_v6: RefCell::new(None),
            next_stream: RefCell::new(1),
            state_dir: RefCell::new(None),
        }
    }

    /// Keeps device-name changes in this state directory.
    pub fn set_state_dir(&self, dir: std::path::PathBuf) {
        *self.state_dir.borrow_mut() = Some(dir);
    }

    /// Registers a new stream connection; returns its id and the queue of packets to write.
    pub fn open_stream(&self) -> (u64, mpsc::Receiver<Packet>) {
        let mut next = self.next_stream.borrow_mut();
        let id = *next;
        *next += 1;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.streams.borrow_mut().insert(id, tx);
        (id, rx)
    }

    /// Forgets a closed stream connection and ends its observations.
    pub fn close_stream(&self, id: u64) {
        self.streams.borrow_mut().remove(&id);
        let mut device = self.device.borrow_mut();
        let before = device.observer_count();
        device.drop_origin(&Origin::Stream(id));
        let ended = before - device.observer_count();
        if ended > 0 {
            debug!(
                connection = id,
                "connection closed; {ended} observations ended"
            );
        }
    }

    /// Closes a stream connection: its task sees its queue end and closes the connection (then
    /// [`Agent::close_stream`] ends its observations).
    pub fn disconnect(&self, id: u64) {
        self.streams.borrow_mut().remove(&id);
    }

    /// Sets the queue of the UDP socket that writes to peers of one address family.
    pub fn set_udp(&self, v6: bool, tx: mpsc::Sender<(SocketAddr, Packet)>) {
        if v6 {
            *self.udp_v6.borrow_mut() = Some(tx);
        } else {
            *self.udp_v4.borrow_mut() = Some(tx);
        }
    }

    /// Sends every pending notification to its observer.
    pub fn flush_notifications(&self) {
        if let Some(name) = self.device.borrow_mut().take_name_change() {
            if let Some(dir) = self.state_dir.borrow().as_ref() {
                match crate::state::Identity::save_name(dir, &name) {
                    Ok(()) => info!(name = %name, "device name changed"),
                    Err(e) => warn!("cannot keep the new device name: {e}"),
                }
            }
        }
        let notifications = self.device.borrow_mut().take_notifications();
        for n in notifications {
            match &n.origin {
                Origin::Stream(id) => {
                    let mut streams = self.streams.borrow_mut();
                    let Some(tx) = streams.get(id) else { continue };
                    if let Err(e) = tx.try_send(n.packet) {
                        // A peer that does not read its notifications is closed rather than
                        // buffered for without bound: dropping the sender ends its writer.
                        if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            warn!(
                                connection = id,
                                "observer does not keep up; closing its connection"
                            );
                        }
                        streams.remove(id);
                        drop(streams);
                        self.device.borrow_mut().drop_origin(&n.origin);
                    }
                }
                Origin::Udp(peer) => {
                    let slot = if peer.is_ipv6() {
                        &self.udp_v6
                    } else {
                        &self.udp_v4
                    };
                    if let Some(tx) = slot.borrow().as_ref() {
                        // UDP notifications may be lost anyway (RFC 7641 §4.5); a full queue
                        // drops this one, the next change is notified again.
                        let _ = tx.try_send((*peer, n.packet));
                    }
                }
            }
        }
    }
}
