//! An IP address as text, without the formatting machinery: the proxy writes two or
//! three per request (the client, the origin, an IP-literal host), and `Display` for
//! IPv4 costs more than the rest of building a record. IPv6 goes through `Display`.

use std::net::IpAddr;

/// `ip` as `Display` writes it.
pub fn ip_text(ip: IpAddr) -> String {
    let mut out = String::new();
    push_ip(&mut out, ip);
    out
}

/// Append `ip` to `out` as `Display` writes it.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        use std::fmt::Write;
        let _ = write!(out, "{ip}");
        return;
    };
    out.reserve(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn the_same_text_as_display() {
        for a in [0u8, 1, 9, 10, 99, 100, 109, 110, 199, 200, 255] {
            for b in [0u8, 7, 42, 250] {
                let ip = IpAddr::V4(Ipv4Addr::new(a, b, 255 - a, b ^ a));
                assert_eq!(ip_text(ip), ip.to_string());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(ip_text(v6), "2001:db8::1");
        let mut out = String::from("x ");
        push_ip(&mut out, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(out, "x 10.0.0.7");
    }
}
