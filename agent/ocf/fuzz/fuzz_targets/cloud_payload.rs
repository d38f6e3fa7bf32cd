//! Fuzzes every decoder of `ocf::cloud::payload`: the Device-to-Cloud request and response
//! bodies, CoAPCloudConf and the persisted state file.
//!
//! Input: `[which, body...]`. `which` picks the type (one per input, so each corpus entry can
//! specialise in one shape of body), and the body is decoded as that type as CBOR (`from_cbor`),
//! as JSON, and as the body of a packet with each Content-Format (`decode_body`, and the
//! `decode` checks of the responses).
//! Besides "never panics": whatever decodes re-encodes (CBOR and JSON) and decodes again to an
//! equal value, and the consumers of a decoded value (`CloudConf::validate`,
//! `CloudSession::restore`) do not panic on it either.
#![no_main]

use std::fmt::Debug;

use coap_lite::option_value::OptionValueU16;
use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};
use libfuzzer_sys::fuzz_target;
use ocf::cloud::payload::{
    decode_body, from_cbor, is_uuid, to_cbor, Clec, CloudConf, CloudServer, Cps, Endpoint,
    LinkPolicy, PayloadError, PublishedLink, RdLink, RdPublishRequest, RdPublishResponse, Secret,
    SessionRequest, SignInResponse, SignUpRequest, SignUpResponse, TokenRefreshRequest,
    TokenRefreshResponse, CF_CBOR, CF_JSON, CF_OCF_CBOR,
};
use ocf::cloud::session::{CloudSession, DeviceInfo, PersistedState, Registration, Timing};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as `T` in every way a `T` reaches the device or the cloud, and checks the
/// round trips of what decoded.
fn check<T>(data: &[u8], packets: &[Packet]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let cbor = from_cbor::<T>(data).ok();
    if let Some(v) = &cbor {
        let bytes = to_cbor(v).expect("a decoded value re-encodes as CBOR");
        let again: T = from_cbor(&bytes).expect("a re-encoded value decodes");
        assert_eq!(&again, v, "CBOR round trip");
    }
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let bytes = serde_json::to_vec(&v).expect("a decoded value re-encodes as JSON");
        let again: T = serde_json::from_slice(&bytes).expect("re-encoded JSON decodes");
        assert_eq!(again, v, "JSON round trip");
        let bytes = to_cbor(&v).expect("a value decoded from JSON encodes as CBOR");
        let again: T = from_cbor(&bytes).expect("CBOR encoded from JSON decodes");
        assert_eq!(again, v, "JSON→CBOR round trip");
    }
    for p in packets {
        let _ = decode_body::<T>(p);
    }
    cbor
}

fn packets(data: &[u8]) -> Vec<Packet> {
    [
        None,
        Some(CF_OCF_CBOR),
        Some(CF_CBOR),
        Some(CF_JSON),
        Some(0),
    ]
    .into_iter()
    .map(|cf| {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Changed);
        if let Some(cf) = cf {
            p.add_option_as(CoapOption::ContentFormat, OptionValueU16(cf));
        }
        p.payload = data.to_vec();
        p
    })
    .collect()
}

/// A response the device decodes, through its own checks as well.
fn response<T>(data: &[u8], packets: &[Packet], decode: fn(&Packet) -> Result<T, PayloadError>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for p in packets {
        let _ = decode(p);
    }
    check::<T>(data, packets);
}

fn cloud_conf(data: &[u8], packets: &[Packet]) {
    if let Some(conf) = check::<CloudConf>(data, packets) {
        let _ = conf.validate();
        let _ = conf.is_deregistration();
    }
    let _ = is_uuid(&String::from_utf8_lossy(data));
}

/// The state file, and the session restored from it.
fn persisted_state(data: &[u8], packets: &[Packet]) {
    if let Ok(state) = PersistedState::from_cbor(data) {
        let bytes = state.to_cbor().expect("a decoded state re-encodes");
        assert_eq!(PersistedState::from_cbor(&bytes).as_ref(), Ok(&state));
        let device = DeviceInfo {
            di: "c0ffee00-0000-4000-8000-000000000001".into(),
            name: "fuzz".into(),
        };
        if let Ok(mut session) = CloudSession::restore(state, device, Timing::default(), 7) {
            while session.poll_action().is_some() {}
            let _ = session.persisted_state();
            let _ = ocf::cloud::resource::representation(&session);
        }
    }
    check::<PersistedState>(data, packets);
}

fn plain<T>(data: &[u8], packets: &[Packet])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    check::<T>(data, packets);
}

const DECODERS: [fn(&[u8], &[Packet]); 20] = [
    // Responses the device decodes.
    |d, p| response(d, p, SignUpResponse::decode),
    |d, p| response(d, p, SignInResponse::decode),
    |d, p| response(d, p, TokenRefreshResponse::decode),
    |d, p| response(d, p, RdPublishResponse::decode),
    plain::<PublishedLink>,
    // Requests the development cloud decodes.
    plain::<SignUpRequest>,
    plain::<SessionRequest>,
    plain::<TokenRefreshRequest>,
    plain::<RdPublishRequest>,
    plain::<RdLink>,
    plain::<LinkPolicy>,
    plain::<Endpoint>,
    // CoAPCloudConf and its parts.
    cloud_conf,
    plain::<CloudServer>,
    plain::<Cps>,
    plain::<Clec>,
    plain::<Secret>,
    // The state file.
    plain::<Registration>,
    persisted_state,
    // Anything at all (no round trip: JSON floats need not survive one exactly).
    |d, p| {
        let _ = from_cbor::<serde_json::Value>(d);
        for p in p {
            let _ = decode_body::<serde_json::Value>(p);
        }
    },
];

fuzz_target!(|data: &[u8]| {
    let [which, body @ ..] = data else {
        return;
    };
    let packets = packets(body);
    DECODERS[usize::from(*which) % DECODERS.len()](body, &packets);
});
