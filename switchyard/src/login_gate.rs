//! Connections still logging in, counted per client address.
//!
//! A database or mail client holds a descriptor from accept until it has authenticated,
//! and a silent one holds it until `timeouts.login`. Without a bound per address, one
//! host opening a few thousand silent sockets would take every descriptor the proxy has
//! and lock everyone else out for that long. The gate admits a client while its address
//! has fewer than `max_logins_per_address` logins in flight; the [`Login`] it gives counts
//! the login until dropped, which the protocol does when authentication ends, and carries
//! the login's deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Logins in flight per client address, for one listener.
#[derive(Debug, Default)]
pub struct LoginGate {
    // foldhash, seeded per process: SipHash's rounds cost more than the rest of a lookup.
    in_flight: Mutex<HashMap<IpAddr, u32, foldhash::fast::RandomState>>,
}

/// One login counted by a [`LoginGate`] until it is dropped.
#[derive(Debug)]
struct LoginTicket<'a> {
    gate: &'a LoginGate,
    address: IpAddr,
}

/// A client logging in: counted by its listener's gate until dropped, and due to have
/// logged in by its deadline.
#[derive(Debug)]
pub struct Login<'a> {
    _ticket: LoginTicket<'a>,
    deadline: Instant,
}

impl Login<'_> {
    /// When the login must have ended (`timeouts.login` after it began, plus any time
    /// [`Login::excuse`]d).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline by the time since `since`: time the proxy spent on its own
    /// work (getting a server) is not the client's to answer for.
    pub fn excuse(&mut self, since: Instant) {
        self.deadline += since.elapsed();
    }
}

impl LoginGate {
    /// A login from `address` due within `timeout`, or `None` when `limit` logins from it
    /// are already in flight (a limit of 0 admits everyone).
    pub fn begin(&self, address: IpAddr, limit: u32, timeout: Duration) -> Option<Login<'_>> {
        Some(Login {
            _ticket: self.enter(address, limit)?,
            deadline: Instant::now() + timeout,
        })
    }

    /// A ticket for a login from `address`, or `None` when `limit` logins from it are
    /// already in flight. A limit of 0 admits everyone (and still counts).
    fn enter(&self, address: IpAddr, limit: u32) -> Option<LoginTicket<'_>> {
        let mut in_flight = self.lock();
        // The map keeps its room for good once a burst of logins made it grow (see
        // `memory`).
        let count = crate::memory::lasting(|| in_flight.entry(canonical(address)).or_insert(0));
        if limit != 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(LoginTicket {
            gate: self,
            address: canonical(address),
        })
    }

    /// Logins in flight from `address` (for tests and status).
    pub fn in_flight(&self, address: IpAddr) -> u32 {
        self.lock().get(&canonical(address)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32, foldhash::fast::RandomState>> {
        // The map stays consistent under a panic (one integer update), so a poisoned lock
        // is used as it is.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for LoginTicket<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.gate.lock();
        if let Some(count) = in_flight.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.address);
            }
        }
    }
}

/// An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`; it is one address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_per_address_and_frees_on_drop() {
        let gate = LoginGate::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = gate.enter(a, 2).expect("first");
        let second = gate.enter(a, 2).expect("second");
        assert!(
            gate.enter(a, 2).is_none(),
            "a third login from a is refused"
        );
        let other = gate.enter(b, 2).expect("another address has its own count");
        drop(first);
        assert_eq!(gate.in_flight(a), 1);
        let third = gate.enter(a, 2).expect("a slot came back");
        drop((second, third, other));
        assert_eq!(gate.in_flight(a), 0);
        assert!(
            gate.lock().is_empty(),
            "addresses without logins are forgotten"
        );
    }

    #[test]
    fn zero_means_no_limit_and_mapped_v4_is_the_same_address() {
        let gate = LoginGate::default();
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        let tickets: Vec<_> = (0..100).map(|_| gate.enter(v4, 0).expect("open")).collect();
        assert_eq!(gate.in_flight(mapped), 100);
        drop(tickets);
        let _one = gate.enter(mapped, 1).expect("one");
        assert!(gate.enter(v4, 1).is_none());
    }
}
