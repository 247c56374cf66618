//! A bound on connections that have not proven who they are yet: API connections before a request
//! with the token, agent connections before their TLS handshake (the client certificate) is done.
//! When a new connection would exceed the bound, the **oldest** unproven connection is closed
//! instead of the new one being refused: a flood of idle connections cannot keep an operator or an
//! agent out, it only churns itself. Each listener has its own gate, so a flood of one cannot use
//! up the other's share; together they stay well under the process's open-file limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub struct ConnectionGate {
    what: &'static str,
    max: usize,
    next_id: AtomicU64,
    /// Unproven connections, oldest first.
    pending: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    evicted: AtomicU64,
}

/// One connection's place at the gate; leaves it when proven ([`Admission::prove`]) or dropped.
pub struct Admission {
    gate: Arc<ConnectionGate>,
    id: u64,
    evict: Arc<Notify>,
}

impl ConnectionGate {
    pub fn new(what: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            max: max.max(1),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(VecDeque::new()),
            evicted: AtomicU64::new(0),
        })
    }

    /// Lets a new connection in, evicting the oldest unproven one when the gate is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        let mut pending = self.pending.lock().expect("gate lock");
        pending.push_back((id, evict.clone()));
        if pending.len() > self.max {
            if let Some((_, oldest)) = pending.pop_front() {
                // A stored permit: the connection notices even if it is not waiting yet.
                oldest.notify_one();
                let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                // Once per power of two: a flood is seen in the log without flooding it.
                if n.is_power_of_two() {
                    tracing::warn!(
                        listener = self.what,
                        evicted = n,
                        max = self.max,
                        "too many unauthenticated connections: closing the oldest"
                    );
                }
            }
        }
        Admission { gate: self.clone(), id, evict }
    }

    /// Unproven connections now.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("gate lock").len()
    }

    /// Connections closed to make room, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Admission {
    /// The connection proved itself: it no longer counts against the gate and is never evicted.
    pub fn prove(&self) {
        self.gate.pending.lock().expect("gate lock").retain(|(id, _)| *id != self.id);
    }

    /// Completes when the gate evicts this connection.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.prove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_gate_evicts_its_oldest_unproven_connection() {
        let gate = ConnectionGate::new("test", 2);
        let first = gate.admit();
        let second = gate.admit();
        second.prove();
        let third = gate.admit();
        assert_eq!(gate.pending(), 2);
        let fourth = gate.admit();
        // The oldest unproven (first) goes; the proven one was never counted.
        tokio::time::timeout(Duration::from_secs(1), first.evicted()).await.expect("first evicted");
        assert!(tokio::time::timeout(Duration::from_millis(50), third.evicted()).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(50), second.evicted()).await.is_err());
        assert_eq!(gate.evicted(), 1);
        drop(fourth);
        drop(third);
        assert_eq!(gate.pending(), 0);
    }
}
