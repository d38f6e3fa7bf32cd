//! embedded-hal drivers for the sensors and actuators of an OCF device on Raspberry Pi-class
//! boards, their OCF resource adapters, sans-IO sampling, and board descriptions.
//!
//! Layers, bottom up:
//!
//! - **Chips**: plain embedded-hal 1.0 drivers that know nothing of OCF, each a `no_std` crate
//!   of its own under `drivers/chips/` with typed registers and every bus transaction tested
//!   against embedded-hal-mock: `lm75x` (LM75/TMP75/TMP105/TMP175) and `bme280-nb`.
//!   Here beside them: [`switch`] (GPIO output), [`contact`] (GPIO input with edges) with
//!   [`debounce`], [`pwm`] (sysfs PWM, rppal with the `rppal` feature), and [`smbus`], which
//!   runs the I2C drivers on SMBus-only adapters.
//! - **Linux** ([`linux`]): `/dev/i2c-N` (plain I2C or SMBus, chosen per adapter) and GPIO
//!   character devices with edge events (gpiocdev).
//! - **OCF adapters**: [`lm75`] and [`bme280`] turn the chips' readings into
//!   `oic.r.temperature`, `oic.r.humidity` and `oic.r.sensor.atmosphericpressure`
//!   representations ([`kind`]); actuators implement [`ocf::resource::Backend`] directly (a
//!   POST is applied to the hardware before it returns, a GET reads the hardware back); sensors
//!   implement [`sensor::Sensor`] and are served from a [`sensor::ReadingCell`] holding the last
//!   good sample, or 5.03 while faulted.
//! - **Sampling** ([`sampler`]): per sensor a period and a change threshold, fault back-off and
//!   rate-limited fault reports, on a virtual clock (no sleeping, no busy polling).
//! - **Boards** ([`board`]): TOML descriptions with file:line:column errors, the built-in
//!   `sim`, `rpi4`, `rpi5` and `qemu-raspi3b`; [`device`] turns one into live resources;
//!   [`sim`] is the simulated hardware.
//!
//! The crate does no I/O scheduling of its own (no tokio): the daemon owns the timers and file
//! descriptors and calls in.
//!
//! # Usage
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ocf_drivers::board::Board;
//! use ocf_drivers::device::{Device, HardwareEnv, LiveDriver};
//!
//! // `ocf-agent --board sim` (a built-in name) or `--board path/to/board.toml`.
//! let board = Board::load("sim").expect("board errors name file:line:column");
//! let mut now = Instant::now();
//! let mut device = Device::build(&board, &HardwareEnv::default(), now).unwrap();
//!
//! // The daemon's timer loop, on a virtual clock here.
//! for _ in 0..10 {
//!     let next = device
//!         .resources
//!         .iter()
//!         .filter_map(|r| match &r.driver {
//!             LiveDriver::Sensor(t) => Some(t.poll_timeout()),
//!             _ => None,
//!         })
//!         .min()
//!         .unwrap();
//!     now = now.max(next);
//!     for r in &mut device.resources {
//!         if let LiveDriver::Sensor(task) = &mut r.driver {
//!             if let Some(report) = task.handle_timeout(now) {
//!                 if let Some(line) = report.log {
//!                     eprintln!("{line}");
//!                 }
//!                 if report.notify {
//!                     // tree.notify_observers(&r.href)
//!                 }
//!             }
//!         }
//!     }
//! }
//! let temperature = device.resource_mut("/temperature").unwrap();
//! let props = temperature.backend.retrieve().unwrap();
//! assert!(props.contains_key("temperature"));
//! # let _ = Duration::ZERO;
//! ```

#![warn(missing_docs)]

pub mod bme280;
pub mod board;
pub mod contact;
pub mod debounce;
pub mod device;
mod error;
pub mod kind;
pub mod linux;
pub mod lm75;
pub mod props;
pub mod pwm;
pub mod sampler;
pub mod sensor;
pub mod sim;
pub mod smbus;
pub mod switch;

pub use error::DriverError;
