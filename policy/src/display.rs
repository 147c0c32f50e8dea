//! Compiled conditions written back as the policy writes them (`*.example.com`,
//! `spiffe://…/*`, `jwt:sub:alice`, `header:x-user`): for `/routes`, `/explain` and the
//! effective policy alike.

use std::fmt;

use crate::compiled::{HostMatch, IdentityPattern, LimitKey, RequestKey};

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::Exact(exact) => f.write_str(exact),
            IdentityPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            IdentityPattern::JwtSubject(subject) => write!(f, "jwt:sub:{subject}"),
            IdentityPattern::JwtClaim { name, value } => write!(f, "jwt:claim:{name}={value}"),
        }
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestKey::ClientIp => f.write_str("client_ip"),
            RequestKey::Path => f.write_str("path"),
            RequestKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::ClientIp => f.write_str("client_ip"),
            LimitKey::Identity => f.write_str("identity"),
            LimitKey::Route => f.write_str("route"),
            LimitKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_as_written() {
        assert_eq!(
            HostMatch::Suffix(".shop.example".into()).to_string(),
            "*.shop.example"
        );
        assert_eq!(
            IdentityPattern::Prefix("spiffe://p/ns/".into()).to_string(),
            "spiffe://p/ns/*"
        );
        let claim = IdentityPattern::JwtClaim {
            name: "team".into(),
            value: "pay".into(),
        };
        assert_eq!(claim.to_string(), "jwt:claim:team=pay");
        assert_eq!(
            RequestKey::Header("x-user".into()).to_string(),
            "header:x-user"
        );
        assert_eq!(LimitKey::Identity.to_string(), "identity");
    }
}
