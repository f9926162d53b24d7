//! The parts of Go's `net` package that OPA's network builtins show through their output,
//! over Go's `net.IP` byte slices (4 bytes for IPv4, 16 for IPv6; an empty one is Go's
//! `nil`): shared by [`crate::opa_builtins`] and [`crate::cidr_merge`].

use std::net::IpAddr;

/// The first 12 bytes of an IPv4-mapped IPv6 address.
pub(crate) const V4_IN_V6_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Go's `net.ParseIP` (through `netip.ParseAddr`; no zones), as 16 bytes or 4 for IPv4.
pub(crate) fn parse_ip(s: &str) -> Option<Vec<u8>> {
    if s.contains('%') {
        return None;
    }
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.octets().to_vec()),
        IpAddr::V6(v6) => Some(v6.octets().to_vec()),
    }
}

/// `net.IP.To4`: IPv4 and IPv4-mapped IPv6 addresses as 4 bytes.
pub(crate) fn to4(ip: &[u8]) -> Option<[u8; 4]> {
    match ip.len() {
        4 => ip.try_into().ok(),
        16 if ip[..12] == V4_IN_V6_PREFIX => ip[12..].try_into().ok(),
        _ => None,
    }
}

pub(crate) fn to16(ip: &[u8]) -> Vec<u8> {
    if ip.len() == 4 {
        [&V4_IN_V6_PREFIX[..], ip].concat()
    } else {
        ip.to_vec()
    }
}

/// `net.IP.DefaultMask`: the classful mask of an IPv4 address (class C's for D and E too).
pub(crate) fn default_mask(ip: [u8; 4]) -> Vec<u8> {
    match ip[0] {
        0..0x80 => cidr_mask(8, 32),
        0x80..0xc0 => cidr_mask(16, 32),
        _ => cidr_mask(24, 32),
    }
}

/// `net.CIDRMask(ones, bits)`.
pub(crate) fn cidr_mask(ones: usize, bits: usize) -> Vec<u8> {
    (0..bits / 8)
        .map(|i| {
            let on = ones.saturating_sub(i * 8).min(8);
            if on == 0 {
                0
            } else {
                0xffu8 << (8 - on)
            }
        })
        .collect()
}

/// `net.IP.Mask`; empty (Go's nil) where the lengths do not fit.
pub(crate) fn ip_mask(ip: &[u8], mask: &[u8]) -> Vec<u8> {
    let mut mask = mask;
    let mut ip = ip;
    if mask.len() == 16 && ip.len() == 4 && mask[..12].iter().all(|b| *b == 0xff) {
        mask = &mask[12..];
    }
    if mask.len() == 4 && ip.len() == 16 && ip[..12] == V4_IN_V6_PREFIX {
        ip = &ip[12..];
    }
    if ip.len() != mask.len() {
        return Vec::new();
    }
    ip.iter().zip(mask).map(|(a, m)| a & m).collect()
}

/// `net.IPMask.Size`: the leading ones, or 0 for a non-canonical mask.
pub(crate) fn mask_size(mask: &[u8]) -> usize {
    let mut ones = 0;
    let mut done = false;
    for byte in mask {
        if done {
            if *byte != 0 {
                return 0;
            }
            continue;
        }
        let leading = byte.leading_ones() as usize;
        ones += leading;
        if leading < 8 {
            if byte << leading != 0 {
                return 0;
            }
            done = true;
        }
    }
    ones
}

/// `net.IP.String`.
pub(crate) fn ip_string(ip: &[u8]) -> String {
    if ip.is_empty() {
        return "<nil>".into();
    }
    if let Some(v4) = to4(ip) {
        return std::net::Ipv4Addr::from(v4).to_string();
    }
    match <[u8; 16]>::try_from(ip) {
        Ok(v6) => std::net::Ipv6Addr::from(v6).to_string(),
        Err(_) => format!("?{}", hex::encode(ip)),
    }
}

/// Go's `net.ParseCIDR` for `cidr_merge.rs`: the masked address and the mask.
pub(crate) fn go_parse_cidr(s: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    parse_cidr(s).map(|n| (n.ip, n.mask))
}

/// A network as Go's `net.ParseCIDR` returns it: masked address and mask of equal length.
pub(crate) struct Network {
    pub(crate) ip: Vec<u8>,
    pub(crate) mask: Vec<u8>,
}

/// Go's `net.ParseCIDR`.
pub(crate) fn parse_cidr(s: &str) -> Option<Network> {
    let (addr, prefix) = s.split_once('/')?;
    let ip = parse_ip(addr)?;
    let bits = ip.len() * 8;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 7 {
        return None;
    }
    let ones: usize = prefix.parse().ok()?;
    if ones > bits {
        return None;
    }
    let mask = cidr_mask(ones, bits);
    // Go keeps a 16-byte address with a 4-byte mask only for IPv4; masking drops to 4 bytes.
    let ip: Vec<u8> = ip.iter().zip(&mask).map(|(a, m)| a & m).collect();
    Some(Network { ip, mask })
}

impl Network {
    /// Go's `net.IPNet.Contains`.
    pub(crate) fn contains(&self, ip: &[u8]) -> bool {
        let (nn, mask): (Vec<u8>, &[u8]) = match to4(&self.ip) {
            Some(v4) => {
                let mask = if self.mask.len() == 16 {
                    &self.mask[12..]
                } else {
                    &self.mask[..]
                };
                (v4.to_vec(), mask)
            }
            None => (self.ip.clone(), &self.mask[..]),
        };
        let ip: Vec<u8> = match to4(ip) {
            Some(v4) => v4.to_vec(),
            None => ip.to_vec(),
        };
        ip.len() == nn.len()
            && mask.len() == nn.len()
            && (0..ip.len()).all(|i| nn[i] & mask[i] == ip[i] & mask[i])
    }

    /// The last address of the network.
    pub(crate) fn last(&self) -> Vec<u8> {
        self.ip
            .iter()
            .zip(&self.mask)
            .map(|(a, m)| a | !m)
            .collect()
    }
}
