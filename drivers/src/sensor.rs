//! What a sampled sensor is to the rest of the crate: something that can be read, and the shared
//! cell through which its last good reading reaches the resource tree.

use std::sync::{Arc, Mutex, MutexGuard};

use ocf::resource::{Backend, Props, ResourceError};

use crate::DriverError;

/// One reading of a sensor resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The resource's main quantity exactly as published (°C, %, hPa, 0/1 for a contact); the
    /// [`Sampler`](crate::sampler::Sampler) compares it against the change threshold.
    pub value: f64,
    /// The full OCF representation (e.g. `temperature`, `units`, `range`, `step`).
    pub props: Props,
}

/// A sensor resource's driver: one call, one reading.
///
/// Implementations do bus I/O in `read` and nothing else: no sleeping, no retrying (the
/// [`Sampler`](crate::sampler::Sampler) schedules retries), no logging (the daemon logs what the
/// sampler reports).
pub trait Sensor {
    /// Take one reading, or say why not.
    fn read(&mut self) -> Result<Reading, DriverError>;
}

impl<S: Sensor + ?Sized> Sensor for Box<S> {
    fn read(&mut self) -> Result<Reading, DriverError> {
        (**self).read()
    }
}

#[derive(Debug, Default)]
struct CellState {
    props: Option<Props>,
    fault: Option<String>,
}

/// The last good reading of a sensor resource, shared between the task that samples it (the
/// writer) and the resource tree's [`SensorBackend`] (the reader). Cloning gives another handle
/// to the same cell.
#[derive(Debug, Clone, Default)]
pub struct ReadingCell(Arc<Mutex<CellState>>);

impl ReadingCell {
    /// An empty cell: the backend answers 5.03 "no reading yet" until the first publish.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, CellState> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store a good reading and clear any fault.
    pub fn publish(&self, props: Props) {
        let mut s = self.lock();
        s.props = Some(props);
        s.fault = None;
    }

    /// Mark the resource unavailable with this diagnostic (the last good reading is kept but
    /// not served until the next publish).
    pub fn set_fault(&self, diagnostic: impl Into<String>) {
        self.lock().fault = Some(diagnostic.into());
    }

    /// The current diagnostic, if the resource is faulted.
    pub fn fault(&self) -> Option<String> {
        self.lock().fault.clone()
    }

    /// What a GET answers: the last good reading, or `Unavailable` while faulted or before the
    /// first reading.
    pub fn get(&self) -> Result<Props, ResourceError> {
        let s = self.lock();
        if let Some(fault) = &s.fault {
            return Err(ResourceError::Unavailable(fault.clone()));
        }
        s.props
            .clone()
            .ok_or_else(|| ResourceError::Unavailable("no reading yet".into()))
    }

    /// A backend serving this cell, for the resource tree.
    pub fn backend(&self) -> SensorBackend {
        SensorBackend { cell: self.clone() }
    }
}

/// The [`Backend`] of a sensor resource: serves the last good sample, or 5.03 with the
/// diagnostic while the sensor is faulted. Sensors are read-only: POST answers 4.05.
#[derive(Debug, Clone)]
pub struct SensorBackend {
    cell: ReadingCell,
}

impl Backend for SensorBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        self.cell.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::{number, props};

    #[test]
    fn cell_serves_last_good_or_unavailable() {
        let cell = ReadingCell::new();
        let mut backend = cell.backend();
        assert!(
            matches!(backend.retrieve(), Err(ResourceError::Unavailable(m)) if m == "no reading yet")
        );
        cell.publish(props([("temperature", number(20.0))]));
        assert_eq!(
            backend.retrieve(),
            Ok(props([("temperature", number(20.0))]))
        );
        cell.set_fault("bus error");
        assert_eq!(
            backend.retrieve(),
            Err(ResourceError::Unavailable("bus error".into()))
        );
        assert_eq!(
            backend.update(&Props::new()),
            Err(ResourceError::MethodNotAllowed)
        );
        cell.publish(props([("temperature", number(21.0))]));
        assert_eq!(cell.fault(), None);
        assert!(backend.retrieve().is_ok());
    }
}
