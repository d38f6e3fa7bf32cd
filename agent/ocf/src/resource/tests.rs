use super::endpoint::Endpoint;
use super::*;
use crate::model::{decode_payload, encode_payload, ContentFormat};
use ciborium::Value;
use coap_lite::ResponseType;

/// A switch whose state lives in the test.
struct Switch(bool);

impl Backend for Switch {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(Props::from([("value".to_string(), Value::Bool(self.0))]))
    }
    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        for (k, v) in props {
            match (k.as_str(), v) {
                ("value", Value::Bool(b)) => self.0 = *b,
                ("value", _) => {
                    return Err(ResourceError::BadRequest("value must be a boolean".into()))
                }
                (other, _) => {
                    return Err(ResourceError::BadRequest(format!(
                        "unknown property {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A sensor that can be made to fail.
struct Thermo(Option<f64>);

impl Backend for Thermo {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        match self.0 {
            Some(t) => Ok(Props::from([
                ("temperature".to_string(), Value::Float(t)),
                ("units".to_string(), Value::Text("C".into())),
            ])),
            None => Err(ResourceError::Unavailable(
                "sensor at 0x48 does not answer".into(),
            )),
        }
    }
}

const DI: &str = "2f1b6a3e-9c1d-4c3e-8f3a-0d3f5b8c9a11";

fn device() -> Device {
    let mut d = Device::new(
        DeviceInfo {
            di: DI.into(),
            piid: "6d0f9ab2-33c3-4d8e-b1f1-5a7c0e2f4b60".into(),
            name: "test".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0,ocf.sh.1.3.0".into(),
            software_version: "0.1.0".into(),
        },
        PlatformInfo {
            pi: "a0b1c2d3-0000-4000-8000-000000000001".into(),
            manufacturer: "Example".into(),
            extra: Props::new(),
        },
    );
    d.add(Resource::new(
        "/switch",
        &["oic.r.switch.binary"],
        &[Interface::Actuator, Interface::Baseline],
        Policy::discoverable_observable(),
        Box::new(Switch(false)),
    ))
    .unwrap();
    d.add(Resource::new(
        "/temperature",
        &["oic.r.temperature"],
        &[Interface::Sensor, Interface::Actuator, Interface::Baseline],
        Policy::discoverable_observable(),
        Box::new(Thermo(Some(21.5))),
    ))
    .unwrap();
    d.set_endpoints(vec![
        Endpoint {
            scheme: "coap",
            addr: "127.0.0.1:5683".parse().unwrap(),
        },
        Endpoint {
            scheme: "coap+tcp",
            addr: "127.0.0.1:5684".parse().unwrap(),
        },
    ]);
    d
}

fn get(path: &str, query: &[(&str, &str)]) -> Request {
    let mut r = Request::new(Method::Get, path);
    r.query = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r
}

fn post(path: &str, body: Value) -> Request {
    let mut r = Request::new(Method::Post, path);
    r.content_format = Some(10000);
    r.payload = encode_payload(ContentFormat::OcfCbor, &body).unwrap();
    r
}

fn body(r: &Response) -> Value {
    let cf = ContentFormat::from_number(r.content_format.expect("content format")).unwrap();
    decode_payload(cf, &r.payload).unwrap()
}

fn get_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_text().unwrap().to_string())
        .collect()
}

const O: Origin = Origin::Stream(1);

#[test]
fn oic_res_link_list_is_the_default_with_anchor_eps_and_policy() {
    let mut d = device();
    let mut req = get("/oic/res", &[]);
    req.accept_version = Some(0x0800);
    let r = d.handle(&O, &req, &[]);
    assert_eq!(r.code, ResponseType::Content);
    assert_eq!(r.content_format, Some(10000));
    let links = body(&r);
    let links = links.as_array().unwrap();
    let hrefs: Vec<_> = links
        .iter()
        .map(|l| get_key(l, "href").unwrap().as_text().unwrap())
        .collect();
    assert_eq!(
        hrefs,
        [
            "/oic/res",
            "/oic/d",
            "/oic/con",
            "/oic/p",
            "/switch",
            "/temperature"
        ]
    );
    let res = &links[0];
    assert_eq!(texts(get_key(res, "rel").unwrap()), ["self"]);
    assert!(texts(get_key(res, "if").unwrap()).contains(&"oic.if.b".to_string()));
    let bm = get_key(get_key(res, "p").unwrap(), "bm")
        .unwrap()
        .as_integer()
        .unwrap();
    assert_eq!(
        i128::from(bm) & 2,
        2,
        "/oic/res must be observable for plgd"
    );
    for l in links {
        assert_eq!(
            get_key(l, "anchor").unwrap().as_text().unwrap(),
            format!("ocf://{DI}")
        );
        let eps = get_key(l, "eps").unwrap().as_array().unwrap();
        assert_eq!(eps.len(), 2);
    }
    let sw = &links[4];
    assert_eq!(texts(get_key(sw, "rt").unwrap()), ["oic.r.switch.binary"]);
    assert_eq!(
        texts(get_key(sw, "if").unwrap()),
        ["oic.if.a", "oic.if.baseline"]
    );
    let d_link = &links[1];
    assert_eq!(
        texts(get_key(d_link, "rt").unwrap()),
        ["oic.d.sensor", "oic.wk.d"]
    );
}

#[test]
fn oic_res_baseline_and_batch_forms() {
    let mut d = device();
    let r = d.handle(&O, &get("/oic/res", &[("if", "oic.if.baseline")]), &[]);
    let v = body(&r);
    let top = &v.as_array().unwrap()[0];
    assert_eq!(texts(get_key(top, "rt").unwrap()), ["oic.wk.res"]);
    assert_eq!(get_key(top, "links").unwrap().as_array().unwrap().len(), 6);

    let r = d.handle(&O, &get("/oic/res", &[("if", "oic.if.b")]), &[]);
    let v = body(&r);
    let items = v.as_array().unwrap();
    let hrefs: Vec<_> = items
        .iter()
        .map(|l| get_key(l, "href").unwrap().as_text().unwrap().to_string())
        .collect();
    assert!(hrefs.contains(&format!("ocf://{DI}/switch")));
    assert!(!hrefs.iter().any(|h| h.ends_with("/oic/res")));
    let sw = items
        .iter()
        .find(|i| {
            get_key(i, "href")
                .unwrap()
                .as_text()
                .unwrap()
                .ends_with("/switch")
        })
        .unwrap();
    assert_eq!(
        get_key(get_key(sw, "rep").unwrap(), "value"),
        Some(&Value::Bool(false))
    );
}

#[test]
fn rt_query_filters_links_and_resources() {
    let mut d = device();
    let v = body(&d.handle(&O, &get("/oic/res", &[("rt", "oic.r.temperature")]), &[]));
    let links = v.as_array().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        get_key(&links[0], "href").unwrap().as_text(),
        Some("/temperature")
    );
    assert_eq!(
        d.handle(&O, &get("/switch", &[("rt", "oic.r.temperature")]), &[])
            .code,
        ResponseType::NotFound
    );
    assert_eq!(
        d.handle(&O, &get("/switch", &[("rt", "oic.r.switch.binary")]), &[])
            .code,
        ResponseType::Content
    );
}

#[test]
fn oic_d_and_oic_p_carry_the_required_properties() {
    let mut d = device();
    let v = body(&d.handle(&O, &get("/oic/d", &[]), &[]));
    for key in ["n", "di", "piid", "icv", "dmv"] {
        assert!(get_key(&v, key).is_some(), "/oic/d lacks {key}");
    }
    assert!(get_key(&v, "rt").is_none(), "oic.if.r view has no rt");
    let v = body(&d.handle(&O, &get("/oic/d", &[("if", "oic.if.baseline")]), &[]));
    assert_eq!(
        texts(get_key(&v, "rt").unwrap()),
        ["oic.d.sensor", "oic.wk.d"]
    );
    let v = body(&d.handle(&O, &get("/oic/p", &[]), &[]));
    assert!(get_key(&v, "pi").is_some() && get_key(&v, "mnmn").is_some());
}

#[test]
fn baseline_adds_rt_and_if() {
    let mut d = device();
    let v = body(&d.handle(&O, &get("/switch", &[("if", "oic.if.baseline")]), &[]));
    assert_eq!(texts(get_key(&v, "rt").unwrap()), ["oic.r.switch.binary"]);
    assert_eq!(get_key(&v, "value"), Some(&Value::Bool(false)));
    let v = body(&d.handle(&O, &get("/switch", &[]), &[]));
    assert!(get_key(&v, "rt").is_none());
}

#[test]
fn post_updates_and_answers_changed() {
    let mut d = device();
    let r = d.handle(
        &O,
        &post(
            "/switch",
            Value::Map(vec![("value".into(), Value::Bool(true))]),
        ),
        &[],
    );
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(get_key(&body(&r), "value"), Some(&Value::Bool(true)));
    let v = body(&d.handle(&O, &get("/switch", &[]), &[]));
    assert_eq!(get_key(&v, "value"), Some(&Value::Bool(true)));
}

#[test]
fn json_bodies_and_accept_json() {
    let mut d = device();
    let mut req = Request::new(Method::Post, "/switch");
    req.content_format = Some(50);
    req.accept = Some(50);
    req.payload = br#"{"value":true}"#.to_vec();
    let r = d.handle(&O, &req, &[]);
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(r.content_format, Some(50));
    let json: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(json["value"], true);
    let mut req = get("/switch", &[]);
    req.accept = Some(60);
    let r = d.handle(&O, &req, &[]);
    assert_eq!(r.content_format, Some(60));
    // Content-format 10000 carries the OCF version option; 60 does not.
    let p = r.to_packet(&[1]);
    assert!(p
        .get_option(coap_lite::CoapOption::Unknown(OCF_CONTENT_VERSION))
        .is_none());
    let p = d
        .handle(
            &O,
            &Request {
                accept: Some(10000),
                ..get("/switch", &[])
            },
            &[],
        )
        .to_packet(&[1]);
    assert_eq!(
        p.get_first_option(coap_lite::CoapOption::Unknown(OCF_CONTENT_VERSION)),
        Some(&vec![0x08, 0x00])
    );
}

#[test]
fn errors_have_the_right_codes_and_a_diagnostic() {
    let mut d = device();
    let cases: Vec<(Request, ResponseType)> = vec![
        (get("/nope", &[]), ResponseType::NotFound),
        (
            Request::new(Method::Delete, "/switch"),
            ResponseType::MethodNotAllowed,
        ),
        (
            Request::new(Method::Put, "/switch"),
            ResponseType::MethodNotAllowed,
        ),
        (
            post(
                "/temperature",
                Value::Map(vec![("temperature".into(), Value::Float(3.0))]),
            ),
            ResponseType::MethodNotAllowed,
        ),
        (
            post(
                "/switch",
                Value::Map(vec![("value".into(), Value::Integer(3.into()))]),
            ),
            ResponseType::BadRequest,
        ),
        (
            post(
                "/switch",
                Value::Map(vec![("colour".into(), Value::Bool(true))]),
            ),
            ResponseType::BadRequest,
        ),
        (
            post(
                "/switch",
                Value::Map(vec![("rt".into(), Value::Bool(true))]),
            ),
            ResponseType::BadRequest,
        ),
        (post("/switch", Value::Bool(true)), ResponseType::BadRequest),
        (
            get("/switch", &[("if", "oic.if.s")]),
            ResponseType::BadRequest,
        ),
        (
            get("/switch", &[("if", "oic.if.nonsense")]),
            ResponseType::BadRequest,
        ),
        (
            Request {
                accept: Some(41),
                ..get("/switch", &[])
            },
            ResponseType::NotAcceptable,
        ),
        (
            Request {
                content_format: Some(0),
                payload: b"x".to_vec(),
                ..Request::new(Method::Post, "/switch")
            },
            ResponseType::UnsupportedContentFormat,
        ),
        (
            Request {
                accept_version: Some(0x0840 - 0x50),
                ..get("/switch", &[])
            },
            ResponseType::UnsupportedContentFormat,
        ),
        (
            Request {
                payload: vec![0xa1, 0x65],
                content_format: Some(10000),
                ..Request::new(Method::Post, "/switch")
            },
            ResponseType::BadRequest,
        ),
        (
            Request::new(Method::Post, "/oic/res"),
            ResponseType::MethodNotAllowed,
        ),
    ];
    for (req, code) in cases {
        let r = d.handle(&O, &req, &[]);
        assert_eq!(r.code, code, "{req:?}");
        assert!(!r.payload.is_empty(), "{req:?} has no diagnostic");
        assert!(r.content_format.is_none());
    }
    // Nothing changed through the refused updates.
    let v = body(&d.handle(&O, &get("/switch", &[]), &[]));
    assert_eq!(get_key(&v, "value"), Some(&Value::Bool(false)));
}

#[test]
fn content_format_follows_what_the_client_speaks() {
    let mut d = device();
    // No Accept, no OCF option: a generic CoAP client; plain CBOR without option 2053.
    let r = d.handle(&O, &get("/switch", &[]), &[]);
    assert_eq!(r.content_format, Some(60));
    assert!(r
        .to_packet(&[])
        .get_option(coap_lite::CoapOption::Unknown(OCF_CONTENT_VERSION))
        .is_none());
    // An OCF client (2049 present) gets 10000 with 2053 = 2048.
    let mut req = get("/switch", &[]);
    req.accept_version = Some(0x0800);
    let r = d.handle(&O, &req, &[]);
    assert_eq!(r.content_format, Some(10000));
    assert_eq!(
        r.to_packet(&[])
            .get_first_option(coap_lite::CoapOption::Unknown(OCF_CONTENT_VERSION)),
        Some(&vec![0x08, 0x00])
    );
    // plgd hub: Accept 10000 and no version options.
    let mut req = get("/switch", &[]);
    req.accept = Some(10000);
    assert_eq!(d.handle(&O, &req, &[]).content_format, Some(10000));
}

#[test]
fn requests_without_ocf_version_options_are_served() {
    let mut d = device();
    let mut req = get("/switch", &[]);
    req.accept = Some(10000);
    assert_eq!(d.handle(&O, &req, &[]).code, ResponseType::Content);
    req.accept_version = Some(0x0800);
    assert_eq!(d.handle(&O, &req, &[]).code, ResponseType::Content);
}

#[test]
fn sensor_fault_is_a_503_with_diagnostic() {
    let mut d = device();
    d.remove("/temperature");
    d.add(Resource::new(
        "/t2",
        &["oic.r.temperature"],
        &[Interface::Sensor],
        Policy::discoverable_observable(),
        Box::new(Thermo(None)),
    ))
    .unwrap();
    let r = d.handle(&O, &get("/t2", &[]), &[]);
    assert_eq!(r.code, ResponseType::ServiceUnavailable);
    assert!(r.diagnostic().contains("0x48"));
}

#[test]
fn observe_register_notify_and_deregister() {
    let mut d = device();
    let mut req = get("/switch", &[]);
    req.observe = Some(0);
    let r = d.handle(&O, &req, b"tok1");
    assert_eq!(r.code, ResponseType::Content);
    let first = r.observe.expect("registration answered with Observe");
    assert_eq!(d.observer_count(), 1);

    d.handle(
        &Origin::Stream(2),
        &post(
            "/switch",
            Value::Map(vec![("value".into(), Value::Bool(true))]),
        ),
        &[],
    );
    let n = d.take_notifications();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].origin, O);
    assert_eq!(n[0].packet.get_token(), b"tok1");
    let resp = Response::from_packet(&n[0].packet).unwrap();
    let second = resp.observe.unwrap();
    assert!(second > first);
    assert_eq!(get_key(&body(&resp), "value"), Some(&Value::Bool(true)));

    d.mark_changed("/switch");
    let third = Response::from_packet(&d.take_notifications()[0].packet)
        .unwrap()
        .observe
        .unwrap();
    assert!(third > second);
    assert!(d.take_notifications().is_empty(), "nothing changed since");

    let mut req = get("/switch", &[]);
    req.observe = Some(1);
    let r = d.handle(&O, &req, b"tok1");
    assert_eq!(r.code, ResponseType::Content);
    assert!(r.observe.is_none());
    assert_eq!(d.observer_count(), 0);
    d.mark_changed("/switch");
    assert!(d.take_notifications().is_empty());
}

#[test]
fn observers_are_dropped_with_their_connection_or_on_reset() {
    let mut d = device();
    let mut req = get("/temperature", &[]);
    req.observe = Some(0);
    d.handle(&Origin::Stream(7), &req, b"a");
    let udp = Origin::Udp("127.0.0.1:9999".parse().unwrap());
    d.handle(&udp, &req, b"b");
    assert_eq!(d.observer_count(), 2);
    d.drop_origin(&Origin::Stream(7));
    assert_eq!(d.observer_count(), 1);
    d.cancel_observation(&udp, b"b");
    assert_eq!(d.observer_count(), 0);
}

#[test]
fn batch_observation_of_oic_res_notifies_on_any_discoverable_change() {
    let mut d = device();
    let mut req = get("/oic/res", &[("if", "oic.if.b")]);
    req.observe = Some(0);
    let r = d.handle(&O, &req, b"batch");
    assert!(r.observe.is_some(), "batch /oic/res must be observable");
    d.mark_changed("/temperature");
    d.mark_changed("/switch");
    let n = d.take_notifications();
    assert_eq!(n.len(), 1, "one batch notification for several changes");
    let v = body(&Response::from_packet(&n[0].packet).unwrap());
    assert!(v.as_array().unwrap().len() >= 3);
    // The link list form is not observable: a plain answer without Observe.
    let mut req = get("/oic/res", &[]);
    req.observe = Some(0);
    assert!(d.handle(&O, &req, b"ll").observe.is_none());
}

#[test]
fn unobservable_resource_answers_without_observe() {
    let mut d = device();
    let mut req = get("/oic/d", &[]);
    req.observe = Some(0);
    let r = d.handle(&O, &req, b"x");
    assert_eq!(r.code, ResponseType::Content);
    assert!(r.observe.is_none());
    assert_eq!(d.observer_count(), 0);
}

#[test]
fn matching_etag_gets_2_03_valid() {
    let mut d = device();
    let r = d.handle(&O, &get("/oic/res", &[("if", "oic.if.b")]), &[]);
    let etag = r.etag.clone().unwrap();
    let mut req = get("/oic/res", &[("if", "oic.if.b")]);
    req.etags = vec![b"other".to_vec(), etag.clone()];
    let r = d.handle(&O, &req, &[]);
    assert_eq!(r.code, ResponseType::Valid);
    assert_eq!(r.etag, Some(etag.clone()));
    assert!(r.payload.is_empty());
    d.handle(
        &O,
        &post(
            "/switch",
            Value::Map(vec![("value".into(), Value::Bool(true))]),
        ),
        &[],
    );
    assert_eq!(
        d.handle(&O, &req, &[]).code,
        ResponseType::Content,
        "changed batch gets a new ETag"
    );
}

#[test]
fn multicast_discovery_answers_only_matches() {
    let mut d = device();
    let peer = Origin::Udp("127.0.0.1:5000".parse().unwrap());
    assert!(d.handle_multicast(&peer, &get("/oic/res", &[])).is_some());
    assert!(d
        .handle_multicast(&peer, &get("/oic/res", &[("rt", "oic.r.switch.binary")]))
        .is_some());
    assert!(d
        .handle_multicast(&peer, &get("/oic/res", &[("rt", "oic.r.nothing")]))
        .is_none());
    assert!(d.handle_multicast(&peer, &get("/switch", &[])).is_none());
}

#[test]
fn duplicate_href_is_refused() {
    let mut d = device();
    let dup = Resource::new(
        "/switch",
        &["oic.r.switch.binary"],
        &[Interface::Actuator],
        Policy::default(),
        Box::new(Switch(true)),
    );
    assert!(d.add(dup).is_err());
    let res = Resource::new(
        "/oic/res",
        &["x"],
        &[Interface::Actuator],
        Policy::default(),
        Box::new(Switch(true)),
    );
    assert!(d.add(res).is_err());
}

#[test]
fn handle_packet_round_trip_keeps_the_token() {
    let mut d = device();
    let p = get("/switch", &[]).to_packet(&[9, 9, 9, 9]);
    let out = d.handle_packet(&O, &p);
    assert_eq!(out.get_token(), &[9, 9, 9, 9]);
    assert_eq!(
        out.header.code,
        coap_lite::MessageClass::Response(ResponseType::Content)
    );
}

#[test]
fn batch_filter_decides_per_item_and_origin_also_for_notifications() {
    let mut d = device();
    let allowed = Origin::Stream(7);
    let filter = move |origin: &Origin, href: &str, iface: Interface| {
        // The resource's default interface is what the item is read through.
        assert!(href != "/switch" || iface == Interface::Actuator);
        *origin == allowed && href == "/switch"
    };
    let f: Option<crate::resource::BatchFilter<'_>> = Some(&filter);
    let hrefs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| get_key(i, "href").unwrap().as_text().unwrap().to_string())
            .collect()
    };
    let r = d.handle_filtered(
        &Origin::Stream(7),
        &get("/oic/res", &[("if", "oic.if.b")]),
        &[],
        f,
    );
    assert_eq!(hrefs(&body(&r)), [format!("ocf://{DI}/switch")]);
    let r = d.handle_filtered(
        &Origin::Stream(8),
        &get("/oic/res", &[("if", "oic.if.b")]),
        &[],
        f,
    );
    assert!(
        hrefs(&body(&r)).is_empty(),
        "nothing for a requester the filter refuses"
    );
    // The link list is discovery: not filtered.
    let r = d.handle_filtered(&Origin::Stream(8), &get("/oic/res", &[]), &[], f);
    assert_eq!(body(&r).as_array().unwrap().len(), 6);
    // Notifications of a batch observation are filtered for their observer too.
    let mut req = get("/oic/res", &[("if", "oic.if.b")]);
    req.observe = Some(0);
    d.handle_filtered(&Origin::Stream(8), &req, b"b8", f);
    d.handle_filtered(&Origin::Stream(7), &req, b"b7", f);
    d.mark_changed("/temperature");
    let notes = d.take_notifications_filtered(f);
    assert_eq!(notes.len(), 2);
    for n in notes {
        let items = hrefs(&body(&Response::from_packet(&n.packet).unwrap()));
        match n.origin {
            Origin::Stream(7) => assert_eq!(items, [format!("ocf://{DI}/switch")]),
            _ => assert!(items.is_empty()),
        }
    }
    let r = d.handle(
        &Origin::Stream(8),
        &get("/oic/res", &[("if", "oic.if.b")]),
        &[],
    );
    assert!(hrefs(&body(&r)).len() >= 3);
}

#[test]
fn device_name_is_written_through_oic_con_and_reported_by_oic_d() {
    let mut d = device();
    let v = body(&d.handle(&O, &get("/oic/con", &[]), &[]));
    assert_eq!(get_key(&v, "n").and_then(Value::as_text), Some("test"));
    let r = d.handle(
        &O,
        &post(
            "/oic/con",
            Value::Map(vec![("n".into(), Value::Text("Kitchen".into()))]),
        ),
        &[],
    );
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(d.take_name_change().as_deref(), Some("Kitchen"));
    assert_eq!(d.take_name_change(), None, "reported once");
    let v = body(&d.handle(&O, &get("/oic/d", &[]), &[]));
    assert_eq!(get_key(&v, "n").and_then(Value::as_text), Some("Kitchen"));
    assert_eq!(d.info().name, "Kitchen");
    // Bad names change nothing.
    for bad in [
        Value::Text(String::new()),
        Value::Text("x".repeat(65)),
        Value::Integer(3.into()),
    ] {
        let r = d.handle(
            &O,
            &post("/oic/con", Value::Map(vec![("n".into(), bad)])),
            &[],
        );
        assert_eq!(r.code, ResponseType::BadRequest);
    }
    let r = d.handle(
        &O,
        &post(
            "/oic/con",
            Value::Map(vec![("colour".into(), Value::Bool(true))]),
        ),
        &[],
    );
    assert_eq!(r.code, ResponseType::BadRequest);
    assert_eq!(d.take_name_change(), None);
    assert_eq!(d.name(), "Kitchen");
}

#[test]
fn a_new_identity_changes_oic_d_oic_con_and_the_anchors_and_notifies() {
    let mut d = device();
    let mut obs = get("/oic/res", &[("if", "oic.if.b")]);
    obs.observe = Some(0);
    assert_eq!(d.handle(&O, &obs, &[7]).code, ResponseType::Content);
    let _ = d.take_notifications();
    const NEW: &str = "0b5d3c2a-1e4f-4a6b-9c8d-7e6f5a4b3c2d";
    d.set_identity(NEW, "factory name");
    let v = body(&d.handle(&O, &get("/oic/d", &[]), &[]));
    assert_eq!(get_key(&v, "di").and_then(Value::as_text), Some(NEW));
    assert_eq!(
        get_key(&v, "n").and_then(Value::as_text),
        Some("factory name")
    );
    let v = body(&d.handle(&O, &get("/oic/con", &[]), &[]));
    assert_eq!(
        get_key(&v, "n").and_then(Value::as_text),
        Some("factory name")
    );
    let res = format!("{:?}", body(&d.handle(&O, &get("/oic/res", &[]), &[])));
    assert!(
        res.contains(&format!("ocf://{NEW}")) && !res.contains(DI),
        "{res}"
    );
    assert_eq!(d.info().di, NEW);
    assert_eq!(d.take_name_change(), None, "not a name written by /oic/con");
    assert_eq!(
        d.take_notifications().len(),
        1,
        "the /oic/d observer hears of it"
    );
}

#[test]
fn links_read_by_the_cloud_carry_no_lan_endpoints() {
    let mut d = device();
    d.set_endpoints(vec![Endpoint {
        scheme: "coap",
        addr: "192.168.1.20:5683".parse().unwrap(),
    }]);
    let cloud = Origin::Stream(9);
    d.set_remote(cloud.clone());
    let eps_of = |d: &mut Device, origin: &Origin| {
        let r = d.handle(origin, &get("/oic/res", &[]), b"t");
        let links = decode_payload(ContentFormat::OcfCbor, &r.payload).unwrap();
        let Value::Array(links) = links else {
            panic!("{links:?}")
        };
        links
            .iter()
            .map(|l| get_key(l, "eps").cloned().unwrap())
            .collect::<Vec<_>>()
    };
    for eps in eps_of(&mut d, &cloud) {
        assert_eq!(eps, Value::Array(vec![]));
    }
    for eps in eps_of(&mut d, &O) {
        assert!(format!("{eps:?}").contains("192.168.1.20"), "{eps:?}");
    }
    // The connection number is reused by a LAN client once the cloud's connection closed.
    d.drop_origin(&cloud);
    for eps in eps_of(&mut d, &cloud) {
        assert!(format!("{eps:?}").contains("192.168.1.20"), "{eps:?}");
    }
}

#[test]
fn a_tagged_body_is_refused_with_4_00_and_a_diagnostic() {
    let mut d = device();
    let mut req = Request::new(Method::Post, "/switch");
    req.content_format = Some(10000);
    // {"value": 1(true)}
    req.payload = vec![0xa1, 0x65, b'v', b'a', b'l', b'u', b'e', 0xc1, 0xf5];
    let r = d.handle(&O, &req, b"t");
    assert_eq!(r.code, ResponseType::BadRequest);
    assert!(r.diagnostic().contains("tag"), "{}", r.diagnostic());
}

#[test]
fn observations_are_capped_per_peer_and_in_total_with_5_03() {
    let mut d = device();
    let observe = |d: &mut Device, origin: &Origin, token: &[u8]| {
        let mut req = get("/switch", &[]);
        req.observe = Some(0);
        d.handle(origin, &req, token)
    };
    // 10 000 registrations with distinct tokens on one connection.
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..10_000u32 {
        let r = observe(&mut d, &O, &i.to_be_bytes());
        match r.code {
            ResponseType::Content => {
                assert!(r.observe.is_some());
                accepted += 1;
            }
            ResponseType::ServiceUnavailable => {
                assert!(r.observe.is_none());
                assert!(r.diagnostic().contains("limit of 64"), "{}", r.diagnostic());
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (accepted, refused),
        (DEFAULT_OBSERVATIONS_PER_PEER, 10_000 - 64)
    );
    assert_eq!(d.observer_count(), DEFAULT_OBSERVATIONS_PER_PEER);
    // Re-registering a live token replaces it (RFC 7641 §4.1): still allowed at the limit.
    assert_eq!(
        observe(&mut d, &O, &0u32.to_be_bytes()).code,
        ResponseType::Content
    );
    assert_eq!(d.observer_count(), DEFAULT_OBSERVATIONS_PER_PEER);
    // A change notifies each live observation once.
    d.mark_changed("/switch");
    assert_eq!(d.take_notifications().len(), DEFAULT_OBSERVATIONS_PER_PEER);
    // Another connection has its own allowance; cancelling frees a place.
    assert_eq!(
        observe(&mut d, &Origin::Stream(99), b"x").code,
        ResponseType::Content
    );
    d.cancel_observation(&O, &1u32.to_be_bytes());
    assert_eq!(observe(&mut d, &O, b"new").code, ResponseType::Content);

    // The device-wide limit, over many peers; batch observations of /oic/res count too.
    let mut d = device();
    d.set_observation_limits(2, 5);
    for peer in 0..5u64 {
        let r = observe(&mut d, &Origin::Stream(100 + peer), b"a");
        assert_eq!(r.code, ResponseType::Content);
    }
    let r = observe(&mut d, &Origin::Stream(200), b"a");
    assert_eq!(r.code, ResponseType::ServiceUnavailable);
    assert!(r.diagnostic().contains("limit of 5"), "{}", r.diagnostic());
    let mut batch = get("/oic/res", &[("if", "oic.if.b")]);
    batch.observe = Some(0);
    let r = d.handle(&Origin::Stream(200), &batch, b"b");
    assert_eq!(r.code, ResponseType::ServiceUnavailable);
    d.drop_origin(&Origin::Stream(100));
    assert_eq!(
        d.handle(&Origin::Stream(200), &batch, b"b").code,
        ResponseType::Content
    );
}
