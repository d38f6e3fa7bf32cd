//! The OCF resource types this crate serves (OCF-PROTOCOL.md §3.5) and their representations.

use ocf::resource::{Interface, Props, Value};

use crate::props::{integer, number, props, text};

/// What a resource is to OCF: its resource type, interfaces and properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `oic.r.temperature`: `temperature` (°C), `units`, `range`, `step`, `precision`.
    Temperature,
    /// `oic.r.humidity`: `humidity`, integer 0-100 (%).
    Humidity,
    /// `oic.r.sensor.atmosphericpressure`: `atmosphericPressure` (hPa).
    Pressure,
    /// `oic.r.switch.binary`: `value` (bool, writable).
    Switch,
    /// `oic.r.light.brightness`: `brightness`, integer 0-100 (writable).
    Brightness,
    /// `oic.r.sensor.contact`: `value` (bool, `true` = open).
    Contact,
}

impl ResourceKind {
    /// The resource type (`rt`).
    pub fn resource_type(self) -> &'static str {
        match self {
            ResourceKind::Temperature => "oic.r.temperature",
            ResourceKind::Humidity => "oic.r.humidity",
            ResourceKind::Pressure => "oic.r.sensor.atmosphericpressure",
            ResourceKind::Switch => "oic.r.switch.binary",
            ResourceKind::Brightness => "oic.r.light.brightness",
            ResourceKind::Contact => "oic.r.sensor.contact",
        }
    }

    /// The interfaces (`if`), the default one first: sensors are read-only (`oic.if.s`),
    /// actuators read-write (`oic.if.a`).
    pub fn interfaces(self) -> &'static [Interface] {
        if self.is_actuator() {
            &[Interface::Actuator, Interface::Baseline]
        } else {
            &[Interface::Sensor, Interface::Baseline]
        }
    }

    /// Whether clients write it (switch, brightness).
    pub fn is_actuator(self) -> bool {
        matches!(self, ResourceKind::Switch | ResourceKind::Brightness)
    }

    /// The main property's name.
    pub fn main_property(self) -> &'static str {
        match self {
            ResourceKind::Temperature => "temperature",
            ResourceKind::Humidity => "humidity",
            ResourceKind::Pressure => "atmosphericPressure",
            ResourceKind::Switch | ResourceKind::Contact => "value",
            ResourceKind::Brightness => "brightness",
        }
    }

    /// The default change threshold for notifications, in the quantity's unit.
    pub fn default_threshold(self) -> f64 {
        match self {
            ResourceKind::Temperature => 0.5,
            ResourceKind::Humidity => 1.0,
            ResourceKind::Pressure => 0.5,
            _ => 0.0,
        }
    }
}

/// `oic.r.temperature` in °C.
pub fn temperature_props(celsius: f64, range: (f64, f64), step: f64) -> Props {
    props([
        ("temperature", number(celsius)),
        ("units", text("C")),
        (
            "range",
            Value::Array(vec![number(range.0), number(range.1)]),
        ),
        ("step", number(step)),
        ("precision", number(step)),
    ])
}

/// `oic.r.humidity`: relative humidity in %, rounded and clamped to 0-100. Returns the
/// published integer and the properties.
pub fn humidity_props(percent: f64) -> (i64, Props) {
    let h = percent.round().clamp(0.0, 100.0) as i64;
    (h, props([("humidity", integer(h))]))
}

/// `oic.r.sensor.atmosphericpressure` in hPa.
pub fn pressure_props(hpa: f64) -> Props {
    props([("atmosphericPressure", number(hpa))])
}

/// `oic.r.sensor.contact`.
pub fn contact_props(open: bool) -> Props {
    props([("value", Value::Bool(open))])
}
