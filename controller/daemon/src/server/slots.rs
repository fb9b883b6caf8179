//! Open connections per uid: a connection holds a [`Slot`] of its peer's uid while it
//! is open; one over the limit is turned away with a 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The open connections of every uid.
#[derive(Debug, Clone, Default)]
pub struct Slots(Arc<Mutex<HashMap<u32, usize>>>);

/// One open connection of `uid`; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    uid: u32,
    slots: Slots,
}

impl Slots {
    /// A slot for `uid`, unless it holds `max` already.
    pub fn take(&self, uid: u32, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().ok()?;
        let n = open.entry(uid).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            uid,
            slots: self.clone(),
        })
    }

    #[cfg(test)]
    pub fn open(&self, uid: u32) -> usize {
        self.0
            .lock()
            .map(|o| o.get(&uid).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.0.lock()
            && let Some(n) = open.get_mut(&self.uid)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_holds_at_most_max_and_gets_them_back() {
        let slots = Slots::default();
        let a: Vec<Slot> = (0..3).filter_map(|_| slots.take(1000, 3)).collect();
        assert_eq!(a.len(), 3);
        assert!(slots.take(1000, 3).is_none(), "a fourth is refused");
        let b = slots.take(1001, 3).expect("another uid has its own count");
        assert_eq!((slots.open(1000), slots.open(1001)), (3, 1));
        drop(a);
        drop(b);
        assert_eq!((slots.open(1000), slots.open(1001)), (0, 0));
        assert!(slots.take(1000, 3).is_some());
    }
}
