//! Where webhooks may go. A subscription's URL is checked when it is
//! registered, and again on every delivery against the addresses the name
//! resolves to then: the client connects only to addresses this policy lets
//! through (its DNS resolver drops the others), so a name that later resolves
//! to an internal address (DNS rebinding) is refused too.
//!
//! Refused unless the operator allows a range: loopback, private (RFC 1918,
//! unique-local), link-local (the cloud metadata address 169.254.169.254 is
//! one), carrier-grade NAT, unspecified, broadcast, multicast and
//! documentation addresses; plain `http` unless allowed.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The operator's choices (`STAGECRAFT_WEBHOOK_ALLOW`: ranges, comma-separated;
/// `STAGECRAFT_WEBHOOK_ALLOW_HTTP=1`).
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// Ranges allowed although internal.
    pub allow: Vec<IpNet>,
    /// Whether `http://` URLs are allowed.
    pub allow_http: bool,
    /// Names resolved here before DNS (an `/etc/hosts` of the policy's own;
    /// the tests name an internal address with it).
    pub names: HashMap<String, Vec<IpAddr>>,
}

impl Egress {
    /// The policy from the environment.
    pub fn from_env() -> Result<Egress, String> {
        let mut e = Egress::default();
        if let Ok(v) = std::env::var("STAGECRAFT_WEBHOOK_ALLOW") {
            e.allow = parse_ranges(&v).map_err(|m| format!("STAGECRAFT_WEBHOOK_ALLOW: {m}"))?;
        }
        e.allow_http = matches!(
            std::env::var("STAGECRAFT_WEBHOOK_ALLOW_HTTP").as_deref(),
            Ok("1" | "true")
        );
        Ok(e)
    }

    /// Whether `ip` may be connected to; if not, why.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match internal(ip) {
            Some(kind) => Err(format!("{ip} is a {kind} address")),
            None => Ok(()),
        }
    }

    /// Checks a URL's form: scheme, host, no credentials; an IP literal is
    /// checked here (no resolver sees it).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        match u.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("url must be https (plain http is not allowed here)".into()),
            s => return Err(format!("url scheme {s:?} is not https")),
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("url must not carry credentials".into());
        }
        match u.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
            None => return Err("url has no host".into()),
        }
        Ok(u)
    }

    /// Resolves `host` and keeps the addresses allowed; an error names the
    /// refused ones when none is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let all: Vec<SocketAddr> = match self.names.get(host) {
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        let mut refused = Vec::new();
        let allowed: Vec<SocketAddr> = all
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(if refused.is_empty() {
                format!("{host} resolves to no address")
            } else {
                format!("{host} is refused: {}", refused.join("; "))
            });
        }
        Ok(allowed)
    }

    /// An HTTP client that connects only where this policy allows, follows no
    /// redirect and gives up on an attempt after `timeout`.
    pub fn client(self: &Arc<Self>, timeout: std::time::Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(self.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("Stagecraft-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the webhook client builds")
    }
}

/// Ranges as `a.b.c.d/n` or a single address, comma-separated.
pub fn parse_ranges(v: &str) -> Result<Vec<IpNet>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address range"))
        })
        .collect()
}

/// What kind of internal address `ip` is, if it is one.
fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata)"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "carrier-grade NAT"
    } else if ip.is_unspecified() || o[0] == 0 {
        "unspecified"
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        "broadcast, multicast or reserved"
    } else if ip.is_documentation() {
        "documentation"
    } else {
        return None;
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "private (unique-local)"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else {
        return None;
    })
}

/// reqwest's DNS hook: resolves through the policy.
struct Resolver(Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            // The port is the connector's to set; 0 here.
            let addrs = egress
                .resolve(name.as_str(), 0)
                .await
                .map_err(|m| -> Box<dyn std::error::Error + Send + Sync> { m.into() })?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let e = Egress::default();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(e.check_ip(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(e.check_ip(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        let allowed = Egress {
            allow: parse_ranges("127.0.0.0/8, 10.1.2.3").unwrap(),
            ..Default::default()
        };
        assert!(allowed.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(allowed.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(allowed.check_ip("10.1.2.4".parse().unwrap()).is_err());
        assert!(parse_ranges("nonsense").is_err());
    }

    #[test]
    fn urls_must_be_https_without_credentials() {
        let e = Egress::default();
        assert!(e.check_url("https://hooks.example.com/x").is_ok());
        for (url, says) in [
            ("http://hooks.example.com/x", "https"),
            ("ftp://hooks.example.com/x", "scheme"),
            ("https://u:p@hooks.example.com/x", "credentials"),
            ("https://169.254.169.254/latest", "link-local"),
            ("not a url", "not a URL"),
        ] {
            let err = e.check_url(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
