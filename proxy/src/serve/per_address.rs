//! Connections open per client address (an IPv4 address or an IPv6 /64, as lockout counts
//! them), held to `[limits] max_connections_per_address` so that one address cannot take
//! every connection slot. The table holds only addresses with a connection open: an entry
//! leaves with its last connection, so it never outgrows `max_connections`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::address::ClientKey;

/// The open connections by address. Keyed by addresses clients choose, so it keeps the
/// standard library's keyed hash.
#[derive(Default)]
pub(super) struct PerAddress {
    open: Arc<Mutex<HashMap<ClientKey, u32>>>,
}

/// One connection counted against its address until it is dropped.
pub(super) struct AddressSlot {
    open: Arc<Mutex<HashMap<ClientKey, u32>>>,
    key: ClientKey,
}

// === impl PerAddress ===

impl PerAddress {
    /// Counts a connection from `key`, unless `cap` from it are open already (`None`).
    pub(super) fn admit(&self, key: ClientKey, cap: u32) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }

    /// Connections open from `key` (for tests).
    #[cfg(test)]
    fn open(&self, key: ClientKey) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&key).copied().unwrap_or(0)
    }

    /// Addresses with a connection open (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

// === impl AddressSlot ===

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn an_address_gets_its_cap_and_a_slot_back_when_a_connection_ends() {
        let table = PerAddress::default();
        let a = key("192.0.2.1");
        let first = table.admit(a, 2).unwrap();
        let _second = table.admit(a, 2).unwrap();
        assert!(table.admit(a, 2).is_none(), "a third connection is refused");
        assert_eq!(table.open(a), 2, "a refusal counts nothing");
        // Another address is not held back by the first one's connections.
        let _other = table.admit(key("192.0.2.2"), 2).unwrap();
        drop(first);
        assert_eq!(table.open(a), 1);
        let _again = table.admit(a, 2).unwrap();
        assert!(table.admit(a, 2).is_none());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address_and_ipv4_mapped_as_ipv4() {
        let table = PerAddress::default();
        let _one = table.admit(key("2001:db8:1:2::1"), 2).unwrap();
        let _two = table.admit(key("2001:db8:1:2:ffff::9"), 2).unwrap();
        assert!(table.admit(key("2001:db8:1:2::77"), 2).is_none());
        let _next_64 = table.admit(key("2001:db8:1:3::1"), 2).unwrap();
        let _v4 = table.admit(key("198.51.100.7"), 1).unwrap();
        assert!(table.admit(key("::ffff:198.51.100.7"), 1).is_none());
    }

    #[test]
    fn the_table_forgets_an_address_with_its_last_connection() {
        let table = PerAddress::default();
        let slots: Vec<AddressSlot> = (0..100)
            .map(|i| table.admit(key(&format!("10.0.0.{i}")), 4).unwrap())
            .collect();
        assert_eq!(table.addresses(), 100);
        drop(slots);
        assert_eq!(table.addresses(), 0);
        // A refusal at a cap of zero leaves no entry behind either.
        assert!(table.admit(key("10.9.9.9"), 0).is_none());
        assert_eq!(table.addresses(), 0);
    }
}
