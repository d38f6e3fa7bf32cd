//! The cloud's address as CoAPCloudConf's `cis` gives it (OCF-PROTOCOL.md §2.1).

/// Where a `cis` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUri {
    /// `coaps+tcp` (TLS) rather than `coap+tcp`.
    pub secure: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
}

impl CloudUri {
    /// Parses `coaps+tcp://host[:port][/...]` (default port 5684) or `coap+tcp://...` (5683)
    /// (OCF-PROTOCOL.md §2.1). IPv6 literals go in brackets.
    pub fn parse(uri: &str) -> Result<CloudUri, String> {
        let bad = |why: &str| format!("cis {uri:?}: {why}");
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (secure, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "coaps+tcp" => (true, 5684),
            "coap+tcp" => (false, 5683),
            _ => return Err(bad("scheme must be coaps+tcp or coap+tcp")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("invalid port")),
                Ok(p) => p,
            },
        };
        Ok(CloudUri {
            secure,
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cis_parsing() {
        let p = |s: &str| CloudUri::parse(s);
        assert_eq!(
            p("coaps+tcp://cloud.example").unwrap(),
            CloudUri {
                secure: true,
                host: "cloud.example".into(),
                port: 5684
            }
        );
        assert_eq!(
            p("coap+tcp://127.0.0.1").unwrap(),
            CloudUri {
                secure: false,
                host: "127.0.0.1".into(),
                port: 5683
            }
        );
        assert_eq!(
            p("COAPS+TCP://[::1]:443/path?x").unwrap(),
            CloudUri {
                secure: true,
                host: "::1".into(),
                port: 443
            }
        );
        assert_eq!(p("coap+tcp://[fe80::1]").unwrap().port, 5683);
        assert_eq!(p("coap+tcp://h:").unwrap().port, 5683);
        for bad in [
            "",
            "cloud.example",
            "https://cloud.example",
            "coaps://cloud.example",
            "coaps+tcp://",
            "coaps+tcp://:5684",
            "coaps+tcp://h:0",
            "coaps+tcp://h:99999",
            "coaps+tcp://h:x",
            "coaps+tcp://[::1",
            "coaps+tcp://[::1]x",
            "coaps+tcp://u@h",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
    }
}
