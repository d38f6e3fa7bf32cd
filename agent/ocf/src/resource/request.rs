//! The request and response as the resource layer sees them, and their conversion from and to
//! CoAP messages (RFC 7252 §5, OCF-PROTOCOL.md §2.5-§2.6 for the OCF options).

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use crate::model::ContentFormat;

/// Option 2049, OCF-Accept-Content-Format-Version.
pub const OCF_ACCEPT_VERSION: u16 = 2049;
/// Option 2053, OCF-Content-Format-Version.
pub const OCF_CONTENT_VERSION: u16 = 2053;
/// OCF 1.0.0 encoded in the version options: 2048 = 0x0800 (OCF 1.x and 2.x).
pub const OCF_VERSION_1_0: u16 = 0x0800;

/// Option numbers this stack understands. An unrecognised *critical* (odd-numbered) option makes
/// a request fail with 4.02 (RFC 7252 §5.4.1); unknown elective ones are ignored.
const KNOWN_OPTIONS: &[u16] = &[
    1,
    3,
    4,
    5,
    6,
    7,
    8,
    11,
    12,
    14,
    15,
    17,
    20,
    23,
    27,
    28,
    35,
    39,
    60,
    258,
    OCF_ACCEPT_VERSION,
    OCF_CONTENT_VERSION,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// A parsed CoAP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path with a leading `/`, segments joined by `/` (`/` alone for an empty path).
    pub path: String,
    /// The Uri-Query options, each split at the first `=`.
    pub query: Vec<(String, String)>,
    pub content_format: Option<u16>,
    pub accept: Option<u16>,
    pub observe: Option<u32>,
    pub etags: Vec<Vec<u8>>,
    pub accept_version: Option<u16>,
    pub content_version: Option<u16>,
    pub payload: Vec<u8>,
}

impl Request {
    pub fn new(method: Method, path: &str) -> Request {
        Request {
            method,
            path: path.to_string(),
            query: Vec::new(),
            content_format: None,
            accept: None,
            observe: None,
            etags: Vec::new(),
            accept_version: None,
            content_version: None,
            payload: Vec::new(),
        }
    }

    /// Parses the request fields of a CoAP message. Returns the response to send instead when
    /// the message cannot be served as a request at all.
    pub fn from_packet(packet: &Packet) -> Result<Request, Response> {
        let method = match packet.header.code {
            MessageClass::Request(RequestType::Get) => Method::Get,
            MessageClass::Request(RequestType::Post) => Method::Post,
            MessageClass::Request(RequestType::Put) => Method::Put,
            MessageClass::Request(RequestType::Delete) => Method::Delete,
            _ => {
                return Err(Response::error(
                    ResponseType::MethodNotAllowed,
                    "method not supported",
                ))
            }
        };
        for (&number, _) in packet.options() {
            if number % 2 == 1 && !KNOWN_OPTIONS.contains(&number) {
                return Err(Response::error(
                    ResponseType::BadOption,
                    &format!("unrecognised critical option {number}"),
                ));
            }
        }
        let mut path = String::new();
        if let Some(segments) = packet.get_option(CoapOption::UriPath) {
            for seg in segments {
                let seg = std::str::from_utf8(seg).map_err(|_| {
                    Response::error(ResponseType::BadRequest, "Uri-Path is not UTF-8")
                })?;
                path.push('/');
                path.push_str(seg);
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        let mut query = Vec::new();
        if let Some(items) = packet.get_option(CoapOption::UriQuery) {
            for item in items {
                let item = std::str::from_utf8(item).map_err(|_| {
                    Response::error(ResponseType::BadRequest, "Uri-Query is not UTF-8")
                })?;
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                query.push((k.to_string(), v.to_string()));
            }
        }
        let uint = |opt: CoapOption| -> Result<Option<u32>, Response> {
            match packet.get_first_option(opt) {
                None => Ok(None),
                Some(bytes) if bytes.len() <= 4 => Ok(Some(
                    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
                )),
                Some(_) => Err(Response::error(
                    ResponseType::BadOption,
                    &format!("option {} is longer than 4 bytes", u16::from(opt)),
                )),
            }
        };
        let u16_opt = |opt: CoapOption| -> Result<Option<u16>, Response> {
            match uint(opt)? {
                None => Ok(None),
                Some(v) => u16::try_from(v).map(Some).map_err(|_| {
                    Response::error(
                        ResponseType::BadOption,
                        &format!("option {} out of range", u16::from(opt)),
                    )
                }),
            }
        };
        let etags = packet
            .get_option(CoapOption::ETag)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        Ok(Request {
            method,
            path,
            query,
            content_format: u16_opt(CoapOption::ContentFormat)?,
            accept: u16_opt(CoapOption::Accept)?,
            observe: uint(CoapOption::Observe)?,
            etags,
            accept_version: u16_opt(CoapOption::Unknown(OCF_ACCEPT_VERSION))?,
            content_version: u16_opt(CoapOption::Unknown(OCF_CONTENT_VERSION))?,
            payload: packet.payload.clone(),
        })
    }

    /// The value of the first query parameter named `key`.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Builds a CoAP message for this request (for clients: the Mediator, the dev cloud, tests).
    /// A CBOR body gets Content-Format 10000 with OCF-Content-Format-Version, and Accept 10000
    /// comes with OCF-Accept-Content-Format-Version, as the reference device sends them.
    pub fn to_packet(&self, token: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(match self.method {
            Method::Get => RequestType::Get,
            Method::Post => RequestType::Post,
            Method::Put => RequestType::Put,
            Method::Delete => RequestType::Delete,
        });
        p.set_token(token.to_vec());
        for seg in self.path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for (k, v) in &self.query {
            let item = if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            };
            p.add_option(CoapOption::UriQuery, item.into_bytes());
        }
        if let Some(obs) = self.observe {
            p.add_option_as(CoapOption::Observe, OptionValueU32(obs));
        }
        for etag in &self.etags {
            p.add_option(CoapOption::ETag, etag.clone());
        }
        if let Some(cf) = self.content_format {
            p.add_option_as(CoapOption::ContentFormat, OptionValueU32(u32::from(cf)));
            if cf == ContentFormat::OCF_CBOR_NUMBER {
                p.add_option_as(
                    CoapOption::Unknown(OCF_CONTENT_VERSION),
                    OptionValueU32(u32::from(self.content_version.unwrap_or(OCF_VERSION_1_0))),
                );
            }
        }
        if let Some(accept) = self.accept {
            p.add_option_as(CoapOption::Accept, OptionValueU32(u32::from(accept)));
            if accept == ContentFormat::OCF_CBOR_NUMBER {
                p.add_option_as(
                    CoapOption::Unknown(OCF_ACCEPT_VERSION),
                    OptionValueU32(u32::from(self.accept_version.unwrap_or(OCF_VERSION_1_0))),
                );
            }
        }
        p.payload = self.payload.clone();
        p
    }
}

/// A response produced by the resource layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub code: ResponseType,
    pub content_format: Option<u16>,
    pub observe: Option<u32>,
    pub etag: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Response {
    pub fn new(code: ResponseType) -> Response {
        Response {
            code,
            content_format: None,
            observe: None,
            etag: None,
            payload: Vec::new(),
        }
    }

    /// An error response with a diagnostic payload (RFC 7252 §5.5.2: UTF-8 text, no
    /// Content-Format).
    pub fn error(code: ResponseType, diagnostic: &str) -> Response {
        Response {
            payload: diagnostic.as_bytes().to_vec(),
            ..Response::new(code)
        }
    }

    /// The diagnostic text of an error response.
    pub fn diagnostic(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Parses the response fields of a CoAP message (for clients).
    pub fn from_packet(packet: &Packet) -> Option<Response> {
        let code = match packet.header.code {
            MessageClass::Response(code) => code,
            _ => return None,
        };
        let uint = |opt: CoapOption| {
            packet
                .get_first_option(opt)
                .filter(|b| b.len() <= 4)
                .map(|b| b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
        };
        Some(Response {
            code,
            content_format: uint(CoapOption::ContentFormat).and_then(|v| u16::try_from(v).ok()),
            observe: uint(CoapOption::Observe),
            etag: packet.get_first_option(CoapOption::ETag).cloned(),
            payload: packet.payload.clone(),
        })
    }

    /// Builds the CoAP message. Content-Format 10000 carries OCF-Content-Format-Version 2048, as
    /// OCF 1.x requires of every OCF-format payload (OCF-PROTOCOL.md §2.6).
    pub fn to_packet(&self, token: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(self.code);
        p.set_token(token.to_vec());
        if let Some(obs) = self.observe {
            p.add_option_as(CoapOption::Observe, OptionValueU32(obs));
        }
        if let Some(etag) = &self.etag {
            p.add_option(CoapOption::ETag, etag.clone());
        }
        if let Some(cf) = self.content_format {
            p.add_option_as(CoapOption::ContentFormat, OptionValueU32(u32::from(cf)));
            if cf == ContentFormat::OCF_CBOR_NUMBER {
                p.add_option_as(
                    CoapOption::Unknown(OCF_CONTENT_VERSION),
                    OptionValueU32(u32::from(OCF_VERSION_1_0)),
                );
            }
        }
        p.payload = self.payload.clone();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_a_packet() {
        let mut req = Request::new(Method::Post, "/a/b");
        req.query.push(("if".into(), "oic.if.a".into()));
        req.content_format = Some(10000);
        req.accept = Some(50);
        req.observe = Some(0);
        req.payload = vec![0xa0];
        let packet = req.to_packet(&[1, 2, 3]);
        let parsed = Request::from_packet(&packet).unwrap();
        assert_eq!(parsed.path, "/a/b");
        assert_eq!(parsed.query_value("if"), Some("oic.if.a"));
        assert_eq!(parsed.content_format, Some(10000));
        assert_eq!(parsed.content_version, Some(0x0800));
        assert_eq!(parsed.accept, Some(50));
        assert_eq!(parsed.accept_version, None);
        assert_eq!(parsed.observe, Some(0));
        assert_eq!(parsed.payload, vec![0xa0]);
    }

    #[test]
    fn unknown_critical_option_is_refused_with_4_02() {
        let mut p = Request::new(Method::Get, "/x").to_packet(&[]);
        p.add_option(CoapOption::Unknown(2051), vec![1]);
        let err = Request::from_packet(&p).unwrap_err();
        assert_eq!(err.code, ResponseType::BadOption);
        // an unknown elective option is ignored
        let mut p = Request::new(Method::Get, "/x").to_packet(&[]);
        p.add_option(CoapOption::Unknown(2050), vec![1]);
        assert!(Request::from_packet(&p).is_ok());
    }

    /// coap-lite writes uint option values in the fewest bytes, as RFC 7252 §3.2 asks.
    #[test]
    fn uint_options_are_minimal() {
        let enc = |v: u32| Vec::<u8>::from(OptionValueU32(v));
        assert_eq!(enc(0), Vec::<u8>::new());
        assert_eq!(enc(1), vec![1]);
        assert_eq!(enc(0x0800), vec![0x08, 0x00]);
        assert_eq!(enc(10000), vec![0x27, 0x10]);
        assert_eq!(enc(0x01_0000), vec![1, 0, 0]);
        assert_eq!(enc(u32::MAX), vec![0xff; 4]);
    }
}
