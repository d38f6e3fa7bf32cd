//! What goes on the wire for every resource kind: no CBOR float shorter than a double, in any
//! interface's form (default, baseline, batch), checked on the encoded bytes' item heads rather
//! than through a decoder. iotivity-lite reads a half float as null, and refuses one in an array.

use coap_lite::ResponseType;
use ocf::model::cbor::float_widths;
use ocf::resource::{
    Backend, Device, DeviceInfo, Method, Origin, PlatformInfo, Policy, Props, Request, Resource,
    ResourceError, Value,
};
use ocf_drivers::kind::{
    contact_props, humidity_props, pressure_props, temperature_props, ResourceKind,
};
use ocf_drivers::props::{integer, number};
use proptest::prelude::*;

struct Fixed(Props);

impl Backend for Fixed {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(self.0.clone())
    }
}

/// A device serving one resource of every kind with the given values.
fn device(
    celsius: f64,
    range: (f64, f64),
    step: f64,
    percent: f64,
    hpa: f64,
    on: bool,
    level: i64,
) -> Device {
    let mut d = Device::new(
        DeviceInfo {
            di: "2f1b6a3e-9c1d-4c3e-8f3a-0d3f5b8c9a11".into(),
            piid: "6d0f9ab2-33c3-4d8e-b1f1-5a7c0e2f4b60".into(),
            name: "wire".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0,ocf.sh.1.3.0".into(),
            software_version: "0.1.0".into(),
        },
        PlatformInfo {
            pi: "a0b1c2d3-0000-4000-8000-000000000001".into(),
            manufacturer: "Example".into(),
            extra: Props::from([("mnfv".to_string(), number(1.5))]),
        },
    );
    let kinds = [
        (
            "/temperature",
            ResourceKind::Temperature,
            temperature_props(celsius, range, step),
        ),
        (
            "/humidity",
            ResourceKind::Humidity,
            humidity_props(percent).1,
        ),
        ("/pressure", ResourceKind::Pressure, pressure_props(hpa)),
        (
            "/switch",
            ResourceKind::Switch,
            Props::from([("value".to_string(), Value::Bool(on))]),
        ),
        (
            "/brightness",
            ResourceKind::Brightness,
            Props::from([("brightness".to_string(), integer(level))]),
        ),
        ("/contact", ResourceKind::Contact, contact_props(!on)),
    ];
    for (href, kind, props) in kinds {
        d.add(Resource::new(
            href,
            &[kind.resource_type()],
            kind.interfaces(),
            Policy::discoverable_observable(),
            Box::new(Fixed(props)),
        ))
        .unwrap();
    }
    d
}

fn get(d: &mut Device, path: &str, query: Option<(&str, &str)>) -> Vec<u8> {
    let mut req = Request::new(Method::Get, path);
    if let Some((k, v)) = query {
        req.query.push((k.into(), v.into()));
    }
    let r = d.handle(&Origin::Stream(1), &req, b"t");
    assert_eq!(r.code, ResponseType::Content, "GET {path} {query:?}");
    r.payload
}

fn assert_doubles(what: &str, bytes: &[u8]) {
    let widths = float_widths(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        widths.iter().all(|&w| w == 8),
        "{what}: float widths {widths:?} in {bytes:02x?}"
    );
}

/// Values a real sensor reports (0.5 °C, 1/16 °C steps) and arbitrary ones.
fn reading() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-80i32..260).prop_map(|h| f64::from(h) / 2.0),
        (-640i32..2000).prop_map(|s| f64::from(s) / 16.0),
        any::<f64>(),
    ]
}

proptest! {
    #[test]
    fn every_kind_and_form_sends_only_doubles(
        celsius in reading(),
        low in reading(),
        high in reading(),
        step in prop_oneof![Just(0.5), Just(0.25), Just(0.1), reading()],
        percent in 0.0f64..100.0,
        hpa in prop_oneof![(3000i32..11000).prop_map(|p| f64::from(p) / 10.0), reading()],
        on in any::<bool>(),
        level in 0i64..=100,
    ) {
        let mut d = device(celsius, (low, high), step, percent, hpa, on, level);
        let hrefs: Vec<String> = d.hrefs().map(str::to_string).collect();
        for href in &hrefs {
            assert_doubles(href, &get(&mut d, href, None));
            assert_doubles(href, &get(&mut d, href, Some(("if", "oic.if.baseline"))));
        }
        assert_doubles("/oic/res batch", &get(&mut d, "/oic/res", Some(("if", "oic.if.b"))));
        assert_doubles("/oic/res", &get(&mut d, "/oic/res", None));
        assert_doubles("/oic/p", &get(&mut d, "/oic/p", None));
    }
}

#[test]
fn a_temperature_of_21_5_and_its_range_are_doubles_on_the_wire() {
    let mut d = device(21.5, (15.0, 30.0), 0.5, 45.0, 1013.0, true, 50);
    let bytes = get(&mut d, "/temperature", None);
    let doubles = [21.5f64, 15.0, 30.0, 0.5];
    for v in doubles {
        let mut encoded = vec![0xfb];
        encoded.extend_from_slice(&v.to_be_bytes());
        assert!(
            bytes.windows(9).any(|w| w == encoded),
            "{v} is not a double in {bytes:02x?}"
        );
    }
    assert_eq!(float_widths(&bytes).unwrap(), [8, 8, 8, 8, 8]);
}
