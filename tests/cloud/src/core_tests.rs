//! Unit tests of the device-facing logic over an in-memory store (no sockets).

use super::*;
use serde_json::json;

const DI: &str = "9f0a6b1e-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
const DI2: &str = "11111111-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
const T0: u64 = 1_700_000_000_000;

fn core(lifetime: u64) -> Core {
    Core::new(
        Store::open_in_memory().unwrap(),
        CoreConfig {
            token_lifetime_secs: lifetime,
            ..CoreConfig::default()
        },
    )
}

fn req(method: Method, path: &str, body: Option<serde_json::Value>) -> Request {
    let mut r = Request::new(method, path);
    if let Some(b) = body {
        r.content_format = Some(CF_OCF_CBOR);
        r.payload = payload::to_cbor(&b).unwrap();
    }
    r
}

fn with_query(mut r: Request, q: &[(&str, &str)]) -> Request {
    r.query = q
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    r
}

fn body(o: &Outcome) -> serde_json::Value {
    payload::from_cbor(&o.response.payload).unwrap()
}

fn code(o: &Outcome) -> ResponseType {
    o.response.code
}

struct Registered {
    access: String,
    refresh: String,
    uid: String,
}

fn sign_up(c: &Core, di: &str, user: &str, now: u64) -> Registered {
    let code_ = c.issue_authcode(user, now).unwrap();
    let o = c.handle(
        Some(di),
        None,
        &req(
            Method::Post,
            URI_ACCOUNT,
            Some(json!({"di": di, "accesstoken": code_, "authprovider": "plgd", "devicetype": "device"})),
        ),
        now,
    );
    assert_eq!(
        code(&o),
        ResponseType::Changed,
        "{}",
        o.response.diagnostic()
    );
    let b = body(&o);
    Registered {
        access: b["accesstoken"].as_str().unwrap().to_owned(),
        refresh: b["refreshtoken"].as_str().unwrap().to_owned(),
        uid: b["uid"].as_str().unwrap().to_owned(),
    }
}

fn sign_in(c: &Core, di: &str, reg: &Registered, now: u64) -> Outcome {
    c.handle(
        Some(di),
        None,
        &req(
            Method::Post,
            URI_SESSION,
            Some(json!({"di": di, "uid": reg.uid, "accesstoken": reg.access, "login": true})),
        ),
        now,
    )
}

fn session(di: &str, uid: &str) -> Session {
    Session {
        di: di.into(),
        uid: uid.into(),
    }
}

#[test]
fn crc32_is_ieee() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"/light/1"), 0xE323_5BFA);
    assert_eq!(crc32(b"/oic/d"), 0x0826_A600);
}

#[test]
fn sign_up_exchanges_a_single_use_code() {
    let c = core(3600);
    let code_ = c.issue_authcode("alice", T0).unwrap();
    let r = req(
        Method::Post,
        URI_ACCOUNT,
        Some(
            json!({"di": DI, "accesstoken": code_, "authprovider": "plgd", "devicetype": "device"}),
        ),
    );
    let o = c.handle(Some(DI), None, &r, T0);
    assert_eq!(code(&o), ResponseType::Changed);
    assert_eq!(o.response.content_format, Some(CF_OCF_CBOR));
    let b = body(&o);
    assert_eq!(b["uid"], "alice");
    assert_eq!(b["expiresin"], 3600);
    assert_eq!(b["redirecturi"], "");
    assert!(b["accesstoken"].as_str().unwrap().len() >= 32);
    assert!(b["refreshtoken"].as_str().unwrap().len() >= 32);
    assert_eq!(o.effect, Effect::None);
    assert!(!o.close);
    assert_eq!(c.store.device(DI).unwrap().unwrap().uid, "alice");
    // Secrets are stored as digests only.
    let t = c.store.tokens(DI).unwrap().unwrap();
    assert_ne!(t.access_hash, b["accesstoken"].as_str().unwrap());

    // The code cannot be used by another device, nor after the duplicate window.
    let r2 = req(
        Method::Post,
        URI_ACCOUNT,
        Some(json!({"di": DI2, "accesstoken": code_})),
    );
    assert_eq!(
        code(&c.handle(None, None, &r2, T0 + 1)),
        ResponseType::Unauthorized
    );
    assert_eq!(
        code(&c.handle(Some(DI), None, &r, T0 + store::REPEAT_WINDOW_MS + 1)),
        ResponseType::Unauthorized
    );
    // An unknown code.
    let r3 = req(
        Method::Post,
        URI_ACCOUNT,
        Some(json!({"di": DI, "accesstoken": "nope"})),
    );
    assert_eq!(
        code(&c.handle(Some(DI), None, &r3, T0)),
        ResponseType::Unauthorized
    );
}

#[test]
fn duplicate_sign_up_is_tolerated_like_hub() {
    let c = core(3600);
    let code_ = c.issue_authcode("alice", T0).unwrap();
    let r = req(
        Method::Post,
        URI_ACCOUNT,
        Some(json!({"di": DI, "accesstoken": code_})),
    );
    assert_eq!(
        code(&c.handle(Some(DI), None, &r, T0)),
        ResponseType::Changed
    );
    let again = c.handle(Some(DI), None, &r, T0 + 1000);
    assert_eq!(code(&again), ResponseType::Changed);
    assert_eq!(body(&again)["uid"], "alice");
}

#[test]
fn sign_up_legacy_authcode_json_and_permanent_tokens() {
    let c = core(0);
    let code_ = c.issue_authcode("bob", T0).unwrap();
    let mut r = Request::new(Method::Post, URI_ACCOUNT);
    r.content_format = Some(CF_JSON);
    r.payload = serde_json::to_vec(&json!({"di": DI, "authcode": code_})).unwrap();
    let o = c.handle(None, None, &r, T0);
    assert_eq!(
        code(&o),
        ResponseType::Changed,
        "{}",
        o.response.diagnostic()
    );
    assert_eq!(body(&o)["expiresin"], -1);
    assert!(c
        .store
        .tokens(DI)
        .unwrap()
        .unwrap()
        .access_expires_ms
        .is_none());
}

#[test]
fn sign_up_refusals() {
    let c = core(3600);
    let code_ = c.issue_authcode("alice", T0).unwrap();
    let up = |b: serde_json::Value, peer: Option<&str>| {
        code(&c.handle(peer, None, &req(Method::Post, URI_ACCOUNT, Some(b)), T0))
    };
    // Unknown provider: 4.01, as hub.
    assert_eq!(
        up(
            json!({"di": DI, "accesstoken": code_, "authprovider": "github"}),
            Some(DI)
        ),
        ResponseType::Unauthorized
    );
    // The body's di is not the certificate's.
    assert_eq!(
        up(json!({"di": DI2, "accesstoken": code_}), Some(DI)),
        ResponseType::Unauthorized
    );
    // Missing di or code, garbage.
    assert_eq!(
        up(json!({"accesstoken": code_}), None),
        ResponseType::BadRequest
    );
    assert_eq!(up(json!({"di": DI}), None), ResponseType::BadRequest);
    assert_eq!(
        up(json!({"di": DI, "accesstoken": ""}), None),
        ResponseType::BadRequest
    );
    let mut garbage = Request::new(Method::Post, URI_ACCOUNT);
    garbage.payload = vec![0xbf, 0x61];
    assert_eq!(
        code(&c.handle(None, None, &garbage, T0)),
        ResponseType::BadRequest
    );
    garbage.content_format = Some(0);
    assert_eq!(
        code(&c.handle(None, None, &garbage, T0)),
        ResponseType::UnsupportedContentFormat
    );
    // None of the refusals consumed the code.
    assert_eq!(
        up(json!({"di": DI, "accesstoken": code_}), Some(DI)),
        ResponseType::Changed
    );
    // Wrong method.
    assert_eq!(
        code(&c.handle(None, None, &req(Method::Get, URI_ACCOUNT, None), T0)),
        ResponseType::MethodNotAllowed
    );
}

#[test]
fn sign_in_checks_token_uid_identity_and_expiry() {
    let c = core(60);
    let reg = sign_up(&c, DI, "alice", T0);
    let o = sign_in(&c, DI, &reg, T0 + 10_500);
    assert_eq!(code(&o), ResponseType::Changed);
    assert_eq!(body(&o)["expiresin"], 50);
    assert_eq!(o.effect, Effect::SignedIn(session(DI, "alice")));

    let wrong = Registered {
        access: "x".repeat(64),
        refresh: String::new(),
        uid: reg.uid.clone(),
    };
    assert_eq!(
        code(&sign_in(&c, DI, &wrong, T0)),
        ResponseType::Unauthorized
    );
    let wrong_uid = Registered {
        access: reg.access.clone(),
        refresh: String::new(),
        uid: "mallory".into(),
    };
    assert_eq!(
        code(&sign_in(&c, DI, &wrong_uid, T0)),
        ResponseType::Unauthorized
    );
    // Expired.
    assert_eq!(
        code(&sign_in(&c, DI, &reg, T0 + 60_000)),
        ResponseType::Unauthorized
    );
    // Certificate of another device.
    let o = c.handle(
        Some(DI2),
        None,
        &req(
            Method::Post,
            URI_SESSION,
            Some(json!({"di": DI, "uid": reg.uid, "accesstoken": reg.access, "login": true})),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::Unauthorized);
    // Unknown device.
    assert_eq!(
        code(&sign_in(&c, DI2, &reg, T0)),
        ResponseType::Unauthorized
    );
    // Missing keys.
    let o = c.handle(
        None,
        None,
        &req(
            Method::Post,
            URI_SESSION,
            Some(json!({"di": DI, "login": true})),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::BadRequest);
}

#[test]
fn permanent_tokens_sign_in_with_minus_one() {
    let c = core(0);
    let reg = sign_up(&c, DI, "alice", T0);
    let o = sign_in(&c, DI, &reg, T0 + 365 * 24 * 3600 * 1000);
    assert_eq!(code(&o), ResponseType::Changed);
    assert_eq!(body(&o)["expiresin"], -1);
}

#[test]
fn sign_out_answers_empty_map() {
    let c = core(3600);
    let reg = sign_up(&c, DI, "alice", T0);
    let s = session(DI, &reg.uid);
    let o = c.handle(
        Some(DI),
        Some(&s),
        &req(
            Method::Post,
            URI_SESSION,
            Some(json!({"di": DI, "uid": reg.uid, "accesstoken": reg.access, "login": false})),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::Changed);
    assert_eq!(body(&o), json!({}));
    assert_eq!(o.effect, Effect::SignedOut);
    // hub fills missing fields from the session.
    let o = c.handle(
        Some(DI),
        Some(&s),
        &req(Method::Post, URI_SESSION, Some(json!({"login": false}))),
        T0,
    );
    assert_eq!(o.effect, Effect::SignedOut);
}

#[test]
fn nothing_but_account_session_refresh_before_sign_in() {
    let c = core(3600);
    for (m, path) in [
        (Method::Post, URI_RD),
        (Method::Delete, URI_RD),
        (Method::Get, URI_RES),
        (Method::Get, "/oic/d"),
    ] {
        let o = c.handle(Some(DI), None, &req(m, path, Some(json!({}))), T0);
        assert_eq!(code(&o), ResponseType::Unauthorized, "{path}");
        assert!(o.close, "{path}");
    }
    // The allowed ones answer without closing, even when refused.
    for path in [URI_ACCOUNT, URI_SESSION, URI_TOKEN_REFRESH] {
        let o = c.handle(
            Some(DI),
            None,
            &req(Method::Post, path, Some(json!({}))),
            T0,
        );
        assert!(!o.close, "{path}");
    }
}

#[test]
fn refresh_rotates_both_tokens() {
    let c = core(5);
    let reg = sign_up(&c, DI, "alice", T0);
    let refresh = |rt: &str, now: u64| {
        c.handle(
            Some(DI),
            None,
            &req(
                Method::Post,
                URI_TOKEN_REFRESH,
                Some(json!({"di": DI, "uid": "alice", "refreshtoken": rt,
                            "authprovider": "plgd", "granttype": "refresh_token"})),
            ),
            now,
        )
    };
    // The access token has expired already; the refresh token still works.
    let o = refresh(&reg.refresh, T0 + 60_000);
    assert_eq!(
        code(&o),
        ResponseType::Changed,
        "{}",
        o.response.diagnostic()
    );
    let b = body(&o);
    assert_eq!(b["expiresin"], 5);
    let new = Registered {
        access: b["accesstoken"].as_str().unwrap().into(),
        refresh: b["refreshtoken"].as_str().unwrap().into(),
        uid: "alice".into(),
    };
    assert_ne!(new.access, reg.access);
    assert_ne!(new.refresh, reg.refresh);
    // Old tokens are gone, new ones work.
    assert_eq!(
        code(&refresh(&reg.refresh, T0 + 60_000)),
        ResponseType::Unauthorized
    );
    assert_eq!(
        code(&sign_in(&c, DI, &reg, T0 + 60_000)),
        ResponseType::Unauthorized
    );
    assert_eq!(
        code(&sign_in(&c, DI, &new, T0 + 61_000)),
        ResponseType::Changed
    );
    assert_eq!(code(&refresh("unknown", T0)), ResponseType::Unauthorized);
    // Another device's certificate, another provider.
    let o = c.handle(
        Some(DI2),
        None,
        &req(
            Method::Post,
            URI_TOKEN_REFRESH,
            Some(json!({"di": DI, "uid": "alice", "refreshtoken": new.refresh})),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::Unauthorized);
    let o = c.handle(
        Some(DI),
        None,
        &req(
            Method::Post,
            URI_TOKEN_REFRESH,
            Some(
                json!({"di": DI, "uid": "alice", "refreshtoken": new.refresh, "authprovider": "x"}),
            ),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::Unauthorized);
}

fn publish_body(di: &str, ttl: i64, hrefs: &[&str]) -> serde_json::Value {
    let links: Vec<_> = hrefs
        .iter()
        .map(|h| {
            json!({"href": h, "rt": ["oic.r.switch.binary"], "if": ["oic.if.a", "oic.if.baseline"],
                        "rel": "hosts", "ins": 7, "p": {"bm": 3}})
        })
        .collect();
    json!({"di": di, "n": "Pi", "ttl": ttl, "links": links})
}

#[test]
fn publish_assigns_crc32_ins() {
    let c = core(3600);
    let reg = sign_up(&c, DI, "alice", T0);
    let s = session(DI, &reg.uid);
    let mut r = req(
        Method::Post,
        URI_RD,
        Some(publish_body(DI, 0, &["/switch/1", "/oic/d"])),
    );
    r.query.push(("rt".into(), "oic.wk.rdpub".into()));
    let o = c.handle(Some(DI), Some(&s), &r, T0);
    assert_eq!(
        code(&o),
        ResponseType::Changed,
        "{}",
        o.response.diagnostic()
    );
    let b = body(&o);
    assert_eq!(b["links"][0]["ins"], i64::from(crc32(b"/switch/1")));
    assert_eq!(b["links"][1]["ins"], i64::from(crc32(b"/oic/d")));
    assert_eq!(b["links"][0]["di"], DI);
    assert_eq!(
        o.effect,
        Effect::Published(vec!["/switch/1".into(), "/oic/d".into()])
    );
    let stored = c.store.links(DI).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(c.store.device(DI).unwrap().unwrap().name, "Pi");

    let pub_ = |b: serde_json::Value| {
        code(&c.handle(Some(DI), Some(&s), &req(Method::Post, URI_RD, Some(b)), T0))
    };
    assert_eq!(
        pub_(publish_body(DI, -1, &["/a"])),
        ResponseType::BadRequest
    );
    assert_eq!(pub_(publish_body(DI, 0, &[])), ResponseType::BadRequest);
    assert_eq!(
        pub_(json!({"ttl": 0, "links": [{"href": "/a", "rt": [], "if": []}]})),
        ResponseType::BadRequest
    );
    assert_eq!(
        pub_(json!({"di": DI, "ttl": 0, "links": [{"rt": []}]})),
        ResponseType::BadRequest
    );
    assert_eq!(
        pub_(publish_body(DI2, 0, &["/a"])),
        ResponseType::Unauthorized
    );
    // Legacy `lt` is checked too.
    assert_eq!(
        pub_(json!({"di": DI, "lt": -5, "links": [{"href": "/a", "rt": [], "if": []}]})),
        ResponseType::BadRequest
    );
}

#[test]
fn unpublish_by_ins() {
    let c = core(3600);
    let reg = sign_up(&c, DI, "alice", T0);
    let s = session(DI, &reg.uid);
    c.handle(
        Some(DI),
        Some(&s),
        &req(
            Method::Post,
            URI_RD,
            Some(publish_body(DI, 0, &["/a", "/b", "/c"])),
        ),
        T0,
    );
    let ins_a = crc32(b"/a").to_string();
    let ins_b = crc32(b"/b").to_string();
    let r = with_query(
        Request::new(Method::Delete, URI_RD),
        &[("di", DI), ("ins", &ins_a), ("ins", &ins_b)],
    );
    let o = c.handle(Some(DI), Some(&s), &r, T0);
    assert_eq!(code(&o), ResponseType::Deleted);
    assert_eq!(
        o.effect,
        Effect::Unpublished(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(c.store.links(DI).unwrap().len(), 1);
    // Nothing matched, another device, a bad ins.
    assert_eq!(
        code(&c.handle(Some(DI), Some(&s), &r, T0)),
        ResponseType::BadRequest
    );
    let r = with_query(
        Request::new(Method::Delete, URI_RD),
        &[("di", DI2), ("ins", "1")],
    );
    assert_eq!(
        code(&c.handle(Some(DI), Some(&s), &r, T0)),
        ResponseType::BadRequest
    );
    let r = with_query(Request::new(Method::Delete, URI_RD), &[("ins", "x")]);
    assert_eq!(
        code(&c.handle(Some(DI), Some(&s), &r, T0)),
        ResponseType::BadRequest
    );
}

#[test]
fn deregistration_deletes_records_and_closes() {
    let c = core(3600);
    let reg = sign_up(&c, DI, "alice", T0);
    let s = session(DI, &reg.uid);
    c.handle(
        Some(DI),
        Some(&s),
        &req(Method::Post, URI_RD, Some(publish_body(DI, 0, &["/a"]))),
        T0,
    );
    let r = with_query(
        Request::new(Method::Delete, URI_ACCOUNT),
        &[("uid", "alice"), ("di", DI)],
    );
    // Without a session or a token: refused.
    assert_eq!(
        code(&c.handle(Some(DI), None, &r, T0)),
        ResponseType::Unauthorized
    );
    // Another owner's uid: refused.
    let wrong = with_query(
        Request::new(Method::Delete, URI_ACCOUNT),
        &[("uid", "bob"), ("di", DI)],
    );
    assert_eq!(
        code(&c.handle(Some(DI), Some(&s), &wrong, T0)),
        ResponseType::Unauthorized
    );
    let o = c.handle(Some(DI), Some(&s), &r, T0);
    assert_eq!(code(&o), ResponseType::Deleted);
    assert!(o.close);
    assert_eq!(o.effect, Effect::Deregistered(DI.into()));
    assert!(c.store.device(DI).unwrap().is_none());
    assert!(c.store.tokens(DI).unwrap().is_none());
    assert!(c.store.links(DI).unwrap().is_empty());

    // Without a session, with the access token in the query (iotivity-lite).
    let reg = sign_up(&c, DI2, "alice", T0);
    let r = with_query(
        Request::new(Method::Delete, URI_ACCOUNT),
        &[("uid", "alice"), ("di", DI2), ("accesstoken", &reg.access)],
    );
    let o = c.handle(None, None, &r, T0);
    assert_eq!(code(&o), ResponseType::Deleted);
    assert!(c.store.device(DI2).unwrap().is_none());
}

#[test]
fn cloud_discovery_lists_the_users_devices() {
    let c = core(3600);
    let a = sign_up(&c, DI, "alice", T0);
    sign_up(&c, DI2, "bob", T0);
    for (di, uid, href) in [(DI, &a.uid, "/a"), (DI2, &"bob".to_owned(), "/b")] {
        let s = session(di, uid);
        let o = c.handle(
            Some(di),
            Some(&s),
            &req(Method::Post, URI_RD, Some(publish_body(di, 0, &[href]))),
            T0,
        );
        assert_eq!(code(&o), ResponseType::Changed);
    }
    let s = session(DI, &a.uid);
    let o = c.handle(Some(DI), Some(&s), &Request::new(Method::Get, URI_RES), T0);
    assert_eq!(code(&o), ResponseType::Content);
    let links = body(&o);
    assert_eq!(links.as_array().unwrap().len(), 1);
    assert_eq!(links[0]["href"], "/a");
    assert_eq!(links[0]["anchor"], format!("ocf://{DI}"));
    // Filters.
    let r = with_query(Request::new(Method::Get, URI_RES), &[("rt", "oic.wk.d")]);
    let o = c.handle(Some(DI), Some(&s), &r, T0);
    assert_eq!(body(&o), json!([]));
    // Unknown paths after sign-in: 4.04, connection kept.
    let o = c.handle(Some(DI), Some(&s), &Request::new(Method::Get, "/nope"), T0);
    assert_eq!(code(&o), ResponseType::NotFound);
    assert!(!o.close);
}

/// OCF-PROTOCOL.md §5.2, §5.5, §7.5: the device persists what the RD holds and, after a sign-out
/// (before a reboot) and a new connection, signs in without publishing again. The links must
/// therefore outlive the sign-out, the session and a token refresh, as in plgd's RD (only an
/// unpublish, a new registration or the device's deletion removes them).
#[test]
fn links_survive_sign_out_and_a_new_sign_in_without_publish() {
    let c = core(3600);
    let reg = sign_up(&c, DI, "alice", T0);
    let o = sign_in(&c, DI, &reg, T0);
    let Effect::SignedIn(s) = o.effect else {
        panic!("{:?}", o.effect)
    };
    let o = c.handle(
        Some(DI),
        Some(&s),
        &req(
            Method::Post,
            URI_RD,
            Some(publish_body(DI, 0, &["/switch/1", "/oic/d"])),
        ),
        T0,
    );
    assert_eq!(code(&o), ResponseType::Changed);
    let published = c.store.links(DI).unwrap();
    assert_eq!(published.len(), 2);

    // Sign-out, then the connection ends.
    let o = c.handle(
        Some(DI),
        Some(&s),
        &req(Method::Post, URI_SESSION, Some(json!({"login": false}))),
        T0 + 1000,
    );
    assert_eq!(o.effect, Effect::SignedOut);
    assert_eq!(c.store.links(DI).unwrap(), published);

    // After the reboot: a refresh and a sign-in on a new connection (no session), no publish.
    let o = c.handle(
        Some(DI),
        None,
        &req(
            Method::Post,
            URI_TOKEN_REFRESH,
            Some(json!({"di": DI, "uid": reg.uid, "refreshtoken": reg.refresh})),
        ),
        T0 + 60_000,
    );
    assert_eq!(code(&o), ResponseType::Changed);
    let reg = Registered {
        access: body(&o)["accesstoken"].as_str().unwrap().to_owned(),
        ..reg
    };
    let o = sign_in(&c, DI, &reg, T0 + 60_000);
    let Effect::SignedIn(s) = o.effect else {
        panic!("{:?}", o.effect)
    };
    assert_eq!(c.store.links(DI).unwrap(), published);
    // Clients still discover them through the cloud.
    let o = c.handle(Some(DI), Some(&s), &Request::new(Method::Get, URI_RES), T0);
    let hrefs: Vec<_> = body(&o)
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["href"].clone())
        .collect();
    assert_eq!(hrefs, [json!("/oic/d"), json!("/switch/1")]);
}
