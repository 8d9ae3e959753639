//! Client addresses in the policy: parse an IP or CIDR network, and index many networks
//! by prefix length so a lookup costs one hash probe per distinct prefix length, however
//! many networks the policy lists.

use std::collections::HashMap;
use std::net::IpAddr;

/// Masked networks → values, hashed by foldhash (looked up for every request).
type NetMap<T> = HashMap<u128, T, foldhash::fast::RandomState>;

/// An IPv4 or IPv6 network, stored masked (`10.1.2.3/8` is kept as `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// True for IPv4 (the address then sits in the low 32 bits of `bits`).
    v4: bool,
    /// The masked network address.
    bits: u128,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    len: u8,
}

/// An IP address as (is IPv4, bits); IPv4-mapped IPv6 addresses count as IPv4.
fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (true, u128::from(u32::from(a))),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (true, u128::from(u32::from(v4))),
            None => (false, u128::from(a)),
        },
    }
}

/// `bits` with all but the top `len` bits of a `width`-bit address cleared.
fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (128 - u32::from(len));
    let shifted = bits << (128 - u32::from(width));
    (shifted & keep) >> (128 - u32::from(width))
}

impl Cidr {
    /// Parses `10.0.0.5` (a /32), `10.0.0.0/8`, `::1` or `fc00::/7`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| {
            format!("\"{text}\" is not an IP address or CIDR network (e.g. 10.0.0.5, 10.0.0.0/8, fc00::/7)")
        })?;
        let (v4, bits) = match ip {
            IpAddr::V4(a) => (true, u128::from(u32::from(a))),
            IpAddr::V6(a) => (false, u128::from(a)),
        };
        let width: u8 = if v4 { 32 } else { 128 };
        let len = match len {
            None => width,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= width && !l.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "\"{text}\": the prefix length must be a number from 0 to {width}"
                    ))
                }
            },
        };
        Ok(Cidr {
            v4,
            bits: mask(bits, len, width),
            len,
        })
    }

    /// True when `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v4, bits) = ip_bits(ip);
        let width = if v4 { 32 } else { 128 };
        v4 == self.v4 && mask(bits, self.len, width) == self.bits
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
}

/// Networks mapped to values, grouped by family and prefix length (longest first).
#[derive(Debug, Clone)]
pub struct CidrIndex<T> {
    /// IPv4 networks: (prefix length, masked network → value), longest prefix first.
    v4: Vec<(u8, NetMap<T>)>,
    /// IPv6 networks, likewise.
    v6: Vec<(u8, NetMap<T>)>,
}

impl<T> Default for CidrIndex<T> {
    fn default() -> Self {
        CidrIndex {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<T: Default> CidrIndex<T> {
    /// The value for exactly `net`, created with `T::default()` when new.
    pub fn entry(&mut self, net: Cidr) -> &mut T {
        let table = if net.v4 { &mut self.v4 } else { &mut self.v6 };
        let pos = match table.iter().position(|(l, _)| *l <= net.len) {
            Some(p) if table[p].0 == net.len => p,
            Some(p) => {
                table.insert(p, (net.len, NetMap::default()));
                p
            }
            None => {
                table.push((net.len, NetMap::default()));
                table.len() - 1
            }
        };
        table[pos].1.entry(net.bits).or_default()
    }
}

impl<T> CidrIndex<T> {
    /// The values of every network containing `ip`, most specific first.
    pub fn matches(&self, ip: IpAddr) -> impl Iterator<Item = (u8, &T)> + '_ {
        let (v4, bits) = ip_bits(ip);
        let (table, width) = if v4 { (&self.v4, 32) } else { (&self.v6, 128) };
        table
            .iter()
            .filter_map(move |(len, map)| map.get(&mask(bits, *len, width)).map(|v| (*len, v)))
    }

    /// True when no network has been added.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_contains() {
        let n = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(n, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(n.contains(ip("10.255.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
        let v6 = Cidr::parse("fc00::/7").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix_len(), 32);
        for bad in [
            "",
            "10.0.0.300",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x/8",
            "::/129",
            "1.2.3.4/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_finds_most_specific_first() {
        let mut idx: CidrIndex<Vec<u32>> = CidrIndex::default();
        assert!(idx.is_empty());
        idx.entry(Cidr::parse("10.0.0.0/8").unwrap()).push(1);
        idx.entry(Cidr::parse("10.1.0.0/16").unwrap()).push(2);
        idx.entry(Cidr::parse("0.0.0.0/0").unwrap()).push(3);
        idx.entry(Cidr::parse("10.1.0.0/16").unwrap()).push(4);
        let got: Vec<(u8, Vec<u32>)> = idx
            .matches(ip("10.1.9.9"))
            .map(|(l, v)| (l, v.clone()))
            .collect();
        assert_eq!(got, vec![(16, vec![2, 4]), (8, vec![1]), (0, vec![3])]);
        assert_eq!(idx.matches(ip("::1")).count(), 0);
    }
}
