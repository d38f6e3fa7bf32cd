//! Register images, mock transactions and a reference formula for tests of this driver and of
//! code built on it (the `test-fixtures` feature; needs `std`).

extern crate std;
use std::vec;
use std::vec::Vec;

use embedded_hal_mock::eh1::i2c::Transaction;

use crate::{reg, Calibration, PRIMARY_ADDRESS};

/// The BMP280 datasheet's worked example (§3.12) for T and P, plus typical humidity trimming
/// values: the calibration blocks at `CALIB_00` (26 bytes) and `CALIB_26` (7 bytes).
pub fn calib_blocks() -> ([u8; 26], [u8; 7]) {
    let mut a = Vec::new();
    a.extend_from_slice(&27504u16.to_le_bytes());
    for v in [26435i16, -1000] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a.extend_from_slice(&36477u16.to_le_bytes());
    for v in [-10685i16, 3024, 2855, 140, -7, 15500, -14600, 6000] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a.push(0); // 0xA0 unused
    a.push(75); // H1
    let mut first = [0; 26];
    first.copy_from_slice(&a);
    // H2 = 362, H3 = 0, H4 = 313 (0x139), H5 = 50 (0x032), H6 = 30.
    let second = [0x6A, 0x01, 0x00, 0x13, 0x29, 0x03, 30];
    (first, second)
}

/// The 8-byte burst of the data registers for raw pressure, temperature and humidity.
pub fn data(adc_p: u32, adc_t: u32, adc_h: u16) -> Vec<u8> {
    vec![
        (adc_p >> 12) as u8,
        (adc_p >> 4) as u8,
        ((adc_p & 0xF) << 4) as u8,
        (adc_t >> 12) as u8,
        (adc_t >> 4) as u8,
        ((adc_t & 0xF) << 4) as u8,
        (adc_h >> 8) as u8,
        adc_h as u8,
    ]
}

/// What `Bme280::init` does on the bus at [`PRIMARY_ADDRESS`], with [`calib_blocks`].
pub fn init_transactions() -> Vec<Transaction> {
    const A: u8 = PRIMARY_ADDRESS;
    let (a, b) = calib_blocks();
    vec![
        Transaction::write_read(A, vec![reg::ID], vec![0x60]),
        Transaction::write_read(A, vec![reg::STATUS], vec![0x00]),
        Transaction::write_read(A, vec![reg::CALIB_00], a.to_vec()),
        Transaction::write_read(A, vec![reg::CALIB_26], b.to_vec()),
        Transaction::write(A, vec![reg::CTRL_MEAS, 0x00]),
        Transaction::write(A, vec![reg::CTRL_HUM, 0x01]),
        Transaction::write(A, vec![reg::CONFIG, 0x40]),
        Transaction::write(A, vec![reg::CTRL_MEAS, 0x27]),
    ]
}

/// A chip that fails every way `init` and `measure` check, in order: the wrong chip ID (a
/// BMP280), calibration still being copied from NVM, then blank calibration, then a good `init`
/// and all-ones data (a bus that floats high).
pub fn faulty_chip_transactions() -> Vec<Transaction> {
    const A: u8 = PRIMARY_ADDRESS;
    let mut tx = vec![
        Transaction::write_read(A, vec![reg::ID], vec![0x58]),
        Transaction::write_read(A, vec![reg::ID], vec![0x60]),
        Transaction::write_read(A, vec![reg::STATUS], vec![0x01]),
        Transaction::write_read(A, vec![reg::ID], vec![0x60]),
        Transaction::write_read(A, vec![reg::STATUS], vec![0x00]),
        Transaction::write_read(A, vec![reg::CALIB_00], vec![0; 26]),
        Transaction::write_read(A, vec![reg::CALIB_26], vec![0; 7]),
    ];
    tx.extend(init_transactions());
    tx.push(Transaction::write_read(A, vec![reg::DATA], vec![0xFF; 8]));
    tx
}

/// The datasheet's double-precision humidity formula, written out independently.
pub fn reference_humidity(c: &Calibration, adc_h: f64, t_fine: f64) -> f64 {
    let x = t_fine - 76800.0;
    let a = adc_h - (c.h4 as f64 * 64.0 + c.h5 as f64 / 16384.0 * x);
    let b = c.h2 as f64 / 65536.0
        * (1.0 + c.h6 as f64 / 67108864.0 * x * (1.0 + c.h3 as f64 / 67108864.0 * x));
    let h = a * b;
    (h * (1.0 - c.h1 as f64 * h / 524288.0)).clamp(0.0, 100.0)
}
