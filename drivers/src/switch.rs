//! A GPIO output (relay, LED) as `oic.r.switch.binary`.
//!
//! [`Switch`] is generic over [`StatefulOutputPin`]: an update is applied to the pin before
//! [`Backend::update`] returns `Ok` (so the 2.04 the router sends is true), and a retrieve reads
//! the pin's state back rather than remembering what was asked. With `active_low` the pin is
//! driven low for "on" (a relay board with an inverting driver, an LED to 3V3).
//!
//! ```
//! use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};
//! use ocf::resource::{Backend, Value};
//! use ocf_drivers::switch::Switch;
//!
//! let pin = Mock::new(&[T::set(State::High), T::get_state(State::High)]);
//! let mut relay = Switch::new(pin, false, "GPIO17");
//! let body = [("value".to_string(), Value::Bool(true))].into();
//! relay.update(&body).unwrap();
//! assert_eq!(relay.retrieve().unwrap()["value"], Value::Bool(true));
//! relay.into_pin().done();
//! ```

use embedded_hal::digital::StatefulOutputPin;
use ocf::resource::{Backend, Props, ResourceError, Value};

use crate::props::{single_writable, type_name};
use crate::DriverError;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct Switch<P> {
    pin: P,
    active_low: bool,
    label: String,
}

impl<P: StatefulOutputPin> Switch<P> {
    /// A switch on `pin`; `label` (e.g. `gpiochip0 line 17`) names it in diagnostics.
    pub fn new(pin: P, active_low: bool, label: impl Into<String>) -> Self {
        Switch {
            pin,
            active_low,
            label: label.into(),
        }
    }

    /// Turn the switch on or off.
    pub fn set(&mut self, on: bool) -> Result<(), DriverError> {
        let high = on != self.active_low;
        let r = if high {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        };
        r.map_err(|e| DriverError::bus(&self.label, "set output", e))
    }

    /// Whether the switch is on, read back from the pin.
    pub fn is_on(&mut self) -> Result<bool, DriverError> {
        let high = self
            .pin
            .is_set_high()
            .map_err(|e| DriverError::bus(&self.label, "read output state", e))?;
        Ok(high != self.active_low)
    }

    /// The pin.
    pub fn into_pin(self) -> P {
        self.pin
    }
}

impl<P: StatefulOutputPin> Backend for Switch<P> {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let on = self
            .is_on()
            .map_err(|e| ResourceError::Unavailable(e.to_string()))?;
        Ok([("value".to_owned(), Value::Bool(on))].into())
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        match single_writable(props, "value", &[])? {
            None => Ok(()),
            Some(Value::Bool(on)) => self
                .set(*on)
                .map_err(|e| ResourceError::Unavailable(e.to_string())),
            Some(other) => Err(ResourceError::BadRequest(format!(
                "\"value\" must be a boolean, not {}",
                type_name(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::{props, text};
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};
    use embedded_hal_mock::eh1::MockError;

    fn body(v: Value) -> Props {
        props([("value", v)])
    }

    #[test]
    fn active_high_update_then_readback() {
        let pin = Mock::new(&[
            T::set(State::High),
            T::get_state(State::High),
            T::set(State::Low),
            T::get_state(State::Low),
        ]);
        let mut s = Switch::new(pin, false, "gpiochip0 line 17");
        s.update(&body(Value::Bool(true))).unwrap();
        assert_eq!(s.retrieve().unwrap(), body(Value::Bool(true)));
        s.update(&body(Value::Bool(false))).unwrap();
        assert_eq!(s.retrieve().unwrap(), body(Value::Bool(false)));
        s.into_pin().done();
    }

    #[test]
    fn active_low_inverts() {
        let pin = Mock::new(&[
            T::set(State::Low),
            T::get_state(State::Low),
            T::get_state(State::High),
        ]);
        let mut s = Switch::new(pin, true, "relay");
        s.update(&body(Value::Bool(true))).unwrap();
        assert_eq!(s.retrieve().unwrap(), body(Value::Bool(true)));
        // Someone else drove the line high: the GET reports the hardware, not our wish.
        assert_eq!(s.retrieve().unwrap(), body(Value::Bool(false)));
        s.into_pin().done();
    }

    #[test]
    fn bad_bodies_change_nothing() {
        // No pin transaction is expected: a bad body must not touch the pin.
        let pin = Mock::new(&[]);
        let mut s = Switch::new(pin, false, "relay");
        let e = s.update(&body(Value::Integer(1.into()))).unwrap_err();
        assert_eq!(
            e,
            ResourceError::BadRequest("\"value\" must be a boolean, not an integer".into())
        );
        let e = s
            .update(&props([
                ("value", Value::Bool(true)),
                ("colour", text("red")),
            ]))
            .unwrap_err();
        assert!(
            matches!(e, ResourceError::BadRequest(m) if m.contains("unknown property \"colour\""))
        );
        let e = s
            .update(&props([
                ("value", Value::Bool(true)),
                ("if", text("oic.if.a")),
            ]))
            .unwrap_err();
        assert_eq!(
            e,
            ResourceError::BadRequest("property \"if\" is read-only".into())
        );
        assert_eq!(s.update(&Props::new()), Ok(()));
        s.into_pin().done();
    }

    #[test]
    fn pin_errors_are_unavailable() {
        let pin = Mock::new(&[
            T::set(State::High).with_error(MockError::Io(std::io::ErrorKind::Other)),
            T::get_state(State::High).with_error(MockError::Io(std::io::ErrorKind::Other)),
        ]);
        let mut s = Switch::new(pin, false, "gpiochip0 line 17");
        let e = s.update(&body(Value::Bool(true))).unwrap_err();
        assert!(
            matches!(&e, ResourceError::Unavailable(m) if m.starts_with("gpiochip0 line 17: set output")),
            "{e:?}"
        );
        assert!(matches!(s.retrieve(), Err(ResourceError::Unavailable(_))));
        s.into_pin().done();
    }
}
