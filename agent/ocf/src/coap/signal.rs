//! CoAP signalling messages over reliable transports (RFC 8323 §5).
//!
//! Signalling messages have code class 7 and their own option number space per code
//! (RFC 8323 §5.2): option 2 means Max-Message-Size in a CSM but Custody in a Ping. They are
//! carried in ordinary `coap_lite::Packet`s, whose 7.xx codes come back as
//! `MessageClass::Reserved(n)`, and read here by number.
//!
//! | Code | Signal | Options |
//! |---|---|---|
//! | 7.01 | CSM (§5.3) | 2 Max-Message-Size (uint 0–4 B), 4 Block-Wise-Transfer (empty) |
//! | 7.02 | Ping (§5.4) | 2 Custody (empty) |
//! | 7.03 | Pong (§5.4) | 2 Custody (empty) |
//! | 7.04 | Release (§5.5) | 2 Alternative-Address (string 1–255 B, repeatable), 4 Hold-Off (uint 0–3 B) |
//! | 7.05 | Abort (§5.6) | 2 Bad-CSM-Option (uint 0–2 B) |
//!
//! All these options are elective (even). Following RFC 7252 §5.4.1 and §5.4.3, unknown
//! elective options and values of the wrong length or format are ignored; an unknown
//! critical (odd) option is an error, which for a CSM means aborting the connection with
//! Bad-CSM-Option naming it (RFC 8323 §5.3, §5.6.1). Release and Abort may carry a
//! diagnostic payload of UTF-8 text (RFC 8323 §5.5, §5.6).

use std::fmt;

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

/// Signalling codes (RFC 8323 §11.1).
pub mod code {
    /// 7.01 Capabilities and Settings Message.
    pub const CSM: u8 = 0xE1;
    /// 7.02 Ping.
    pub const PING: u8 = 0xE2;
    /// 7.03 Pong.
    pub const PONG: u8 = 0xE3;
    /// 7.04 Release.
    pub const RELEASE: u8 = 0xE4;
    /// 7.05 Abort.
    pub const ABORT: u8 = 0xE5;
    /// Code class 7: signalling.
    pub const CLASS: u8 = 7;
}

/// Signalling option numbers, scoped per code (RFC 8323 §11.2).
pub mod option {
    /// CSM: Max-Message-Size (uint, 0–4 bytes; base value 1152), §5.3.1.
    pub const MAX_MESSAGE_SIZE: u16 = 2;
    /// CSM: Block-Wise-Transfer (empty: BERT supported), §5.3.2.
    pub const BLOCK_WISE_TRANSFER: u16 = 4;
    /// Ping/Pong: Custody (empty), §5.4.1.
    pub const CUSTODY: u16 = 2;
    /// Release: Alternative-Address (string, 1–255 bytes, repeatable), §5.5.
    pub const ALTERNATIVE_ADDRESS: u16 = 2;
    /// Release: Hold-Off (uint, 0–3 bytes, seconds), §5.5.
    pub const HOLD_OFF: u16 = 4;
    /// Abort: Bad-CSM-Option (uint, 0–2 bytes), §5.6.1.
    pub const BAD_CSM_OPTION: u16 = 2;
}

/// Base value of Max-Message-Size until a CSM says otherwise (RFC 8323 §5.3.1).
pub const BASE_MAX_MESSAGE_SIZE: u32 = 1152;

/// Largest Hold-Off a 3-byte uint carries (RFC 8323 §5.5).
pub const MAX_HOLD_OFF: u32 = 0xFF_FFFF;

/// A signalling message (RFC 8323 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// 7.01 Capabilities and Settings Message (§5.3). Options absent from a CSM leave the
    /// previous setting unchanged: CSMs are cumulative.
    Csm {
        /// Largest message the sender can receive (§5.3.1).
        max_message_size: Option<u32>,
        /// The sender supports BERT (§5.3.2).
        block_wise_transfer: bool,
    },
    /// 7.02 Ping (§5.4).
    Ping {
        /// Asks the peer to answer only once it has processed everything before the Ping.
        custody: bool,
    },
    /// 7.03 Pong (§5.4): the answer to a Ping, carrying its Token.
    Pong {
        /// The responder has processed every message received before the Ping.
        custody: bool,
    },
    /// 7.04 Release (§5.5): the sender wants to close the connection gracefully.
    Release {
        /// Where the peer may reconnect instead (repeatable option).
        alternative_addresses: Vec<String>,
        /// Seconds to wait before reconnecting (at most [`MAX_HOLD_OFF`]).
        hold_off: Option<u32>,
        /// Diagnostic text carried as the payload (UTF-8).
        diagnostic: String,
    },
    /// 7.05 Abort (§5.6): the sender is closing the connection because of an error.
    Abort {
        /// The CSM option that made the sender abort (§5.6.1).
        bad_csm_option: Option<u16>,
        /// Diagnostic text carried as the payload (UTF-8).
        diagnostic: String,
    },
}

/// Why a signalling message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalError {
    /// A 7.xx code that RFC 8323 does not define.
    UnknownCode(u8),
    /// An unknown critical (odd) option. In a CSM the receiver aborts the connection with
    /// Bad-CSM-Option set to `number` (RFC 8323 §5.3, §5.6.1).
    UnknownCriticalOption {
        /// The signalling code the option appeared in.
        code: u8,
        /// The option number.
        number: u16,
    },
}

impl SignalError {
    /// The option to name in Bad-CSM-Option when aborting because of this error.
    pub fn bad_csm_option(&self) -> Option<u16> {
        match self {
            SignalError::UnknownCriticalOption {
                code: code::CSM,
                number,
            } => Some(*number),
            _ => None,
        }
    }
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::UnknownCode(c) => {
                write!(f, "unknown signalling code {}.{:02}", c >> 5, c & 0x1F)
            }
            SignalError::UnknownCriticalOption { code, number } => write!(
                f,
                "unknown critical option {number} in signalling message {}.{:02}",
                code >> 5,
                code & 0x1F
            ),
        }
    }
}

impl std::error::Error for SignalError {}

impl Signal {
    /// The signalling code of this message.
    pub fn code(&self) -> u8 {
        match self {
            Signal::Csm { .. } => code::CSM,
            Signal::Ping { .. } => code::PING,
            Signal::Pong { .. } => code::PONG,
            Signal::Release { .. } => code::RELEASE,
            Signal::Abort { .. } => code::ABORT,
        }
    }

    /// Builds the packet for this signal with the given token.
    ///
    /// Tokens are at most 8 bytes (RFC 8323 §3.2); a longer one is cut to 8 so that the
    /// packet can always be framed. Integers are encoded in the fewest bytes (RFC 7252
    /// §3.2); a Hold-Off above [`MAX_HOLD_OFF`] is clamped to it. The packet's type is NON
    /// and its Message-ID 0, which RFC 8323 framing ignores.
    pub fn to_packet(&self, token: &[u8]) -> Packet {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::NonConfirmable);
        packet.header.message_id = 0;
        packet.header.code = MessageClass::from(self.code());
        packet.set_token(token[..token.len().min(crate::coap::tcp::MAX_TOKEN_LEN)].to_vec());
        let mut add =
            |number: u16, value: Vec<u8>| packet.add_option(CoapOption::from(number), value);
        match self {
            Signal::Csm {
                max_message_size,
                block_wise_transfer,
            } => {
                if let Some(size) = max_message_size {
                    add(option::MAX_MESSAGE_SIZE, OptionValueU32(*size).into());
                }
                if *block_wise_transfer {
                    add(option::BLOCK_WISE_TRANSFER, Vec::new());
                }
            }
            Signal::Ping { custody } | Signal::Pong { custody } => {
                if *custody {
                    add(option::CUSTODY, Vec::new());
                }
            }
            Signal::Release {
                alternative_addresses,
                hold_off,
                diagnostic,
            } => {
                for address in alternative_addresses {
                    add(option::ALTERNATIVE_ADDRESS, address.as_bytes().to_vec());
                }
                if let Some(seconds) = hold_off {
                    add(
                        option::HOLD_OFF,
                        OptionValueU32((*seconds).min(MAX_HOLD_OFF)).into(),
                    );
                }
                packet.payload = diagnostic.as_bytes().to_vec();
            }
            Signal::Abort {
                bad_csm_option,
                diagnostic,
            } => {
                if let Some(number) = bad_csm_option {
                    add(
                        option::BAD_CSM_OPTION,
                        OptionValueU32(u32::from(*number)).into(),
                    );
                }
                packet.payload = diagnostic.as_bytes().to_vec();
            }
        }
        packet
    }

    /// Reads a signalling message. `Ok(None)` when the code is not of class 7.
    ///
    /// Unknown elective options and option values of the wrong length or format are
    /// ignored (RFC 7252 §5.4.1, §5.4.3); an unknown critical option is an error. A
    /// diagnostic payload that is not valid UTF-8 is decoded lossily: it is only text for a
    /// log, and the signal must still take effect.
    pub fn from_packet(packet: &Packet) -> Result<Option<Signal>, SignalError> {
        let code = u8::from(packet.header.code);
        if code >> 5 != code::CLASS {
            return Ok(None);
        }
        let known: &[u16] = match code {
            code::CSM => &[option::MAX_MESSAGE_SIZE, option::BLOCK_WISE_TRANSFER],
            code::PING | code::PONG => &[option::CUSTODY],
            code::RELEASE => &[option::ALTERNATIVE_ADDRESS, option::HOLD_OFF],
            code::ABORT => &[option::BAD_CSM_OPTION],
            other => return Err(SignalError::UnknownCode(other)),
        };
        for (&number, values) in packet.options() {
            if !values.is_empty() && !known.contains(&number) && number % 2 == 1 {
                return Err(SignalError::UnknownCriticalOption { code, number });
            }
        }
        let values = |number: u16| {
            packet
                .options()
                .filter(move |(&n, _)| n == number)
                .flat_map(|(_, values)| values.iter())
        };
        // The first well-formed value of a non-repeatable option counts (RFC 7252 §5.4.5).
        let first_uint =
            |number: u16, max_len: usize| values(number).find_map(|v| read_uint(v, max_len));
        let has_empty = |number: u16| values(number).any(|v| v.is_empty());
        let diagnostic = || String::from_utf8_lossy(&packet.payload).into_owned();

        let signal = match code {
            code::CSM => Signal::Csm {
                max_message_size: first_uint(option::MAX_MESSAGE_SIZE, 4),
                block_wise_transfer: has_empty(option::BLOCK_WISE_TRANSFER),
            },
            code::PING => Signal::Ping {
                custody: has_empty(option::CUSTODY),
            },
            code::PONG => Signal::Pong {
                custody: has_empty(option::CUSTODY),
            },
            code::RELEASE => Signal::Release {
                alternative_addresses: values(option::ALTERNATIVE_ADDRESS)
                    .filter(|v| (1..=255).contains(&v.len()))
                    .filter_map(|v| String::from_utf8(v.clone()).ok())
                    .collect(),
                hold_off: first_uint(option::HOLD_OFF, 3),
                diagnostic: diagnostic(),
            },
            // Only ABORT is left: every other code returned above.
            _ => Signal::Abort {
                bad_csm_option: first_uint(option::BAD_CSM_OPTION, 2)
                    .and_then(|n| u16::try_from(n).ok()),
                diagnostic: diagnostic(),
            },
        };
        Ok(Some(signal))
    }
}

/// A uint option value of at most `max_len` bytes; leading zeros are allowed.
fn read_uint(value: &[u8], max_len: usize) -> Option<u32> {
    if value.len() > max_len || value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::tcp;
    use coap_lite::{RequestType, ResponseType};
    use proptest::prelude::*;

    fn round_trip(signal: &Signal, token: &[u8]) -> Signal {
        let bytes = tcp::encode(&signal.to_packet(token)).unwrap();
        let (packet, used) = tcp::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(packet.get_token(), token);
        Signal::from_packet(&packet).unwrap().unwrap()
    }

    #[test]
    fn worked_bytes() {
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        let ping = Signal::Ping { custody: false }.to_packet(&token);
        assert_eq!(
            tcp::encode(&ping).unwrap(),
            [0x08, 0xE2, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let csm = Signal::Csm {
            max_message_size: Some(1152),
            block_wise_transfer: false,
        }
        .to_packet(&[]);
        assert_eq!(tcp::encode(&csm).unwrap(), [0x30, 0xE1, 0x22, 0x04, 0x80]);
        let (packet, _) = tcp::decode(&[0x30, 0xE1, 0x22, 0x04, 0x80]).unwrap();
        assert_eq!(
            Signal::from_packet(&packet).unwrap(),
            Some(Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: false
            })
        );
    }

    #[test]
    fn every_signal_round_trips() {
        let signals = [
            Signal::Csm {
                max_message_size: None,
                block_wise_transfer: false,
            },
            Signal::Csm {
                max_message_size: Some(0),
                block_wise_transfer: true,
            },
            Signal::Csm {
                max_message_size: Some(u32::MAX),
                block_wise_transfer: true,
            },
            Signal::Ping { custody: false },
            Signal::Ping { custody: true },
            Signal::Pong { custody: false },
            Signal::Pong { custody: true },
            Signal::Release {
                alternative_addresses: vec![],
                hold_off: None,
                diagnostic: String::new(),
            },
            Signal::Release {
                alternative_addresses: vec![
                    "coaps+tcp://[2001:db8::1]:5684".into(),
                    "coap+tcp://example.org".into(),
                ],
                hold_off: Some(30),
                diagnostic: "maintenance ⚙".into(),
            },
            Signal::Abort {
                bad_csm_option: None,
                diagnostic: "bye".into(),
            },
            Signal::Abort {
                bad_csm_option: Some(65_535),
                diagnostic: String::new(),
            },
        ];
        for signal in &signals {
            for token in [&[][..], &[9], &[1, 2, 3, 4, 5, 6, 7, 8]] {
                assert_eq!(&round_trip(signal, token), signal);
            }
        }
    }

    #[test]
    fn hold_off_is_clamped_to_three_bytes() {
        let signal = Signal::Release {
            alternative_addresses: vec![],
            hold_off: Some(u32::MAX),
            diagnostic: String::new(),
        };
        let packet = signal.to_packet(&[]);
        let value = packet
            .get_first_option(CoapOption::from(option::HOLD_OFF))
            .unwrap();
        assert_eq!(value, &[0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn not_signalling() {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(RequestType::Get);
        assert_eq!(Signal::from_packet(&packet), Ok(None));
        packet.header.code = MessageClass::Response(ResponseType::Content);
        assert_eq!(Signal::from_packet(&packet), Ok(None));
        packet.header.code = MessageClass::Empty;
        assert_eq!(Signal::from_packet(&packet), Ok(None));
    }

    #[test]
    fn unknown_codes() {
        for c in [0xE0u8, 0xE6, 0xFF] {
            let mut packet = Packet::new();
            packet.header.code = MessageClass::from(c);
            assert_eq!(
                Signal::from_packet(&packet),
                Err(SignalError::UnknownCode(c))
            );
        }
    }

    #[test]
    fn unknown_elective_ignored_critical_refused() {
        let mut csm = Signal::Csm {
            max_message_size: Some(4096),
            block_wise_transfer: false,
        }
        .to_packet(&[]);
        csm.add_option(CoapOption::from(6), vec![1, 2, 3]);
        assert_eq!(
            Signal::from_packet(&csm).unwrap(),
            Some(Signal::Csm {
                max_message_size: Some(4096),
                block_wise_transfer: false
            })
        );
        csm.add_option(CoapOption::from(9), vec![]);
        let err = Signal::from_packet(&csm).unwrap_err();
        assert_eq!(
            err,
            SignalError::UnknownCriticalOption {
                code: code::CSM,
                number: 9
            }
        );
        assert_eq!(err.bad_csm_option(), Some(9));

        let mut ping = Signal::Ping { custody: true }.to_packet(&[1]);
        ping.add_option(CoapOption::from(3), vec![]);
        let err = Signal::from_packet(&ping).unwrap_err();
        assert_eq!(err.bad_csm_option(), None);
    }

    #[test]
    fn malformed_values_are_ignored() {
        let mut csm = Packet::new();
        csm.header.code = MessageClass::from(code::CSM);
        // Five bytes: longer than Max-Message-Size allows.
        csm.add_option(
            CoapOption::from(option::MAX_MESSAGE_SIZE),
            vec![1, 0, 0, 0, 0],
        );
        // Block-Wise-Transfer must be empty.
        csm.add_option(CoapOption::from(option::BLOCK_WISE_TRANSFER), vec![1]);
        assert_eq!(
            Signal::from_packet(&csm).unwrap(),
            Some(Signal::Csm {
                max_message_size: None,
                block_wise_transfer: false
            })
        );
        // Leading zeros are fine.
        let mut csm = Packet::new();
        csm.header.code = MessageClass::from(code::CSM);
        csm.add_option(
            CoapOption::from(option::MAX_MESSAGE_SIZE),
            vec![0, 0x04, 0x80],
        );
        assert_eq!(
            Signal::from_packet(&csm).unwrap(),
            Some(Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: false
            })
        );

        let mut release = Packet::new();
        release.header.code = MessageClass::from(code::RELEASE);
        release.add_option(CoapOption::from(option::ALTERNATIVE_ADDRESS), vec![]);
        release.add_option(
            CoapOption::from(option::ALTERNATIVE_ADDRESS),
            vec![0xFF, 0xFE],
        );
        release.add_option(
            CoapOption::from(option::ALTERNATIVE_ADDRESS),
            b"ok".to_vec(),
        );
        release.add_option(CoapOption::from(option::HOLD_OFF), vec![1, 0, 0, 0]);
        release.payload = vec![b'h', b'i', 0xFF];
        assert_eq!(
            Signal::from_packet(&release).unwrap(),
            Some(Signal::Release {
                alternative_addresses: vec!["ok".into()],
                hold_off: None,
                diagnostic: "hi\u{FFFD}".into(),
            })
        );
    }

    fn arb_signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            (any::<Option<u32>>(), any::<bool>()).prop_map(|(m, b)| Signal::Csm {
                max_message_size: m,
                block_wise_transfer: b
            }),
            any::<bool>().prop_map(|custody| Signal::Ping { custody }),
            any::<bool>().prop_map(|custody| Signal::Pong { custody }),
            (
                prop::collection::vec("[a-z0-9:/\\[\\]\\.+]{1,60}", 0..4),
                prop::option::of(0..=MAX_HOLD_OFF),
                ".{0,40}"
            )
                .prop_map(|(a, h, d)| Signal::Release {
                    alternative_addresses: a,
                    hold_off: h,
                    diagnostic: d
                }),
            (any::<Option<u16>>(), ".{0,40}").prop_map(|(b, d)| Signal::Abort {
                bad_csm_option: b,
                diagnostic: d
            }),
        ]
    }

    proptest! {
        #[test]
        fn signals_round_trip(
            signal in arb_signal(),
            token in prop::collection::vec(any::<u8>(), 0..=8),
        ) {
            prop_assert_eq!(round_trip(&signal, &token), signal);
        }
    }
}
