//! A BPF ring-buffer consumer shared by the telemetry programs, the memory programs and
//! the scheduler:
//! libbpf's callback decodes each record into a queue, and [`EventQueue::poll`] waits
//! for records, then hands the decoded events out with no lock held.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libbpf_rs::{ErrorKind, MapHandle, RingBuffer, RingBufferBuilder};

use crate::error::BpfError;

/// A ring-buffer record type.
pub(crate) trait Decode: Sized + Send + 'static {
    /// The event in `bytes`, or `None` for a record of the wrong size.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// Decoded events waiting to be handed out.
#[derive(Debug)]
struct Pending<T> {
    events: Vec<T>,
    malformed: u64,
}

/// The consumer of one ring-buffer map (whose fd it keeps).
#[derive(Debug)]
pub(crate) struct EventQueue<T> {
    ring: Mutex<RingBuffer<'static>>,
    pending: Arc<Mutex<Pending<T>>>,
    map_name: &'static str,
    _map: MapHandle,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Decode> EventQueue<T> {
    /// Builds the consumer of the ring-buffer map `map` (named `map_name` in errors).
    pub(crate) fn new(map: MapHandle, map_name: &'static str) -> Result<Self, BpfError> {
        let pending = Arc::new(Mutex::new(Pending {
            events: Vec::new(),
            malformed: 0,
        }));
        let sink = Arc::clone(&pending);
        let ring_err = |source| BpfError::RingBuffer {
            op: "setting up",
            map: map_name,
            source,
        };
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&map, move |data: &[u8]| {
                let mut p = lock(&sink);
                match T::decode(data) {
                    Some(e) => p.events.push(e),
                    None => p.malformed += 1,
                }
                0
            })
            .map_err(ring_err)?;
        let ring = builder.build().map_err(ring_err)?;
        Ok(Self {
            ring: Mutex::new(ring),
            pending,
            map_name,
            _map: map,
        })
    }

    /// Waits up to `timeout` for records (`Duration::ZERO` only drains,
    /// `Duration::MAX` waits until one arrives), then hands every event received so
    /// far to `f`, in order, and returns how many. A signal interrupting the wait is
    /// not an error. Blocking: call it from a dedicated thread.
    pub(crate) fn poll(&self, timeout: Duration, mut f: impl FnMut(T)) -> Result<usize, BpfError> {
        // ring_buffer__poll takes an int of milliseconds; -1 (Duration::MAX) is forever.
        let timeout = if timeout == Duration::MAX {
            timeout
        } else {
            timeout.min(Duration::from_millis(i32::MAX as u64))
        };
        if let Err(source) = lock(&self.ring).poll(timeout)
            && source.kind() != ErrorKind::Interrupted
        {
            return Err(BpfError::RingBuffer {
                op: "polling",
                map: self.map_name,
                source,
            });
        }
        let events = std::mem::take(&mut lock(&self.pending).events);
        let n = events.len();
        events.into_iter().for_each(&mut f);
        Ok(n)
    }

    /// Records that did not decode, cumulative.
    pub(crate) fn malformed(&self) -> u64 {
        lock(&self.pending).malformed
    }
}

impl Decode for crate::abi::BudgetEvent {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes)
    }
}

impl Decode for crate::abi::TeleEvent {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes)
    }
}

impl Decode for crate::abi::MemEvent {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes)
    }
}
