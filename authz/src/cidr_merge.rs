//! OPA's `net.cidr_merge`, which regorus lacks: the smallest list of networks covering a list of
//! addresses and networks.
//!
//! A port of OPA's `topdown/cidr.go` and `internal/cidr/merge` (after Cilium's) over Go's
//! `net.IP` byte slices, quirks included, because the output text depends on them: a bare IPv4
//! address takes its classful mask and keeps its host bits (`10.1.2.3` gives `10.1.2.3/8`),
//! merged IPv4 ranges travel as 16-byte IPv4-mapped addresses, and an IPv4-mapped IPv6 network
//! is never merged with anything. Addresses are `Vec<u8>` as in Go (an empty one is Go's `nil`), with
//! `u128` standing in for Go's `big.Int`.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use regorus::Value;

use crate::go_net::go_parse_cidr;
use crate::go_net::{
    cidr_mask, default_mask, ip_mask, ip_string, mask_size, parse_ip, to16, to4, V4_IN_V6_PREFIX,
};
use crate::outcome::{Outcome, ABORTS};

/// Go's `net.IPNet`.
#[derive(Clone)]
struct IpNet {
    ip: Vec<u8>,
    mask: Vec<u8>,
}

/// One range to merge; `network` is the input network it came from, until merged.
struct BlockRange {
    first: Vec<u8>,
    last: Vec<u8>,
    network: Option<IpNet>,
}

/// `net.cidr_merge(addresses)`.
pub(crate) fn cidr_merge(operand: &Value) -> Outcome {
    let items: Vec<&Value> = if let Ok(array) = operand.as_array() {
        array.iter().collect()
    } else if let Ok(set) = operand.as_set() {
        set.iter().collect()
    } else {
        return Err("operand must be an array".into());
    };
    let mut networks = Vec::with_capacity(items.len());
    for item in items {
        networks.push(ip_net_of(item)?);
    }
    let merged = merge(networks)?;
    let out: BTreeSet<Value> = merged
        .iter()
        .map(|n| Value::from(ip_net_string(n)))
        .collect();
    Ok(Value::from(out))
}

/// OPA's `generateIPNet`: an address (IPv4 only, with its default mask) or a network.
fn ip_net_of(item: &Value) -> Result<IpNet, String> {
    let text = item
        .as_string()
        .map_err(|_| "element must be string".to_string())?;
    if let Some(ip) = parse_ip(text) {
        let ip = to16(&ip);
        return match to4(&ip) {
            Some(v4) => Ok(IpNet {
                mask: default_mask(v4),
                ip,
            }),
            None => Err("IPv6 invalid: needs prefix length".into()),
        };
    }
    let (ip, mask) = go_parse_cidr(text).ok_or_else(|| format!("invalid CIDR address: {text}"))?;
    Ok(IpNet { ip, mask })
}

fn merge(networks: Vec<IpNet>) -> Result<Vec<IpNet>, String> {
    if networks.is_empty() {
        return Ok(Vec::new());
    }
    let mut ranges: Vec<BlockRange> = Vec::with_capacity(networks.len());
    for network in networks {
        let (first, last) = address_range(&network)?;
        ranges.push(BlockRange {
            first,
            last,
            network: Some(network),
        });
    }
    // Go's sort.Sort is not stable, but ranges equal on both bounds merge the same either way.
    ranges.sort_by(|a, b| a.last.cmp(&b.last).then_with(|| a.first.cmp(&b.first)));
    let mut i = ranges.len() - 1;
    while i > 0 {
        let previous = previous_ip(&ranges[i].first);
        if previous.as_slice().cmp(&ranges[i - 1].last) != Ordering::Greater {
            let first = if ranges[i - 1].first < ranges[i].first {
                ranges[i - 1].first.clone()
            } else {
                ranges[i].first.clone()
            };
            let last = ranges[i].last.clone();
            ranges[i - 1] = BlockRange {
                first,
                last,
                network: None,
            };
            ranges.remove(i);
        }
        i -= 1;
    }
    let mut out = Vec::new();
    for range in ranges {
        match range.network {
            Some(network) => out.push(network),
            None => out.extend(range_to_cidrs(&range.first, &range.last)?),
        }
    }
    Ok(out)
}

/// `net.IPNet.String`: the address as stored (not masked) and the prefix length.
fn ip_net_string(network: &IpNet) -> String {
    let ip: Vec<u8> = match to4(&network.ip) {
        Some(v4) => v4.to_vec(),
        None if network.ip.len() == 16 => network.ip.clone(),
        None => return "<nil>".into(),
    };
    let mask: &[u8] = match network.mask.len() {
        4 if ip.len() == 4 => &network.mask,
        4 => return "<nil>".into(),
        16 if ip.len() == 4 => &network.mask[12..],
        16 => &network.mask,
        _ => return "<nil>".into(),
    };
    let ones = mask_size(mask);
    let canonical = ones == mask.len() * 8 || cidr_mask(ones, mask.len() * 8) == mask;
    if canonical {
        format!("{}/{ones}", ip_string(&ip))
    } else {
        format!("{}/{}", ip_string(&ip), hex::encode(mask))
    }
}

// ---------------------------------------------------------------------------------------------
// OPA's internal/cidr/merge

/// `GetAddressRange`: first and last address, IPv4 as 16-byte IPv4-mapped addresses.
fn address_range(network: &IpNet) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut first = ip_mask(&network.ip, &network.mask);
    // Go prefixes any IPv4 address, an IPv4-mapped one too (28 bytes, which then sorts and
    // compares apart from the others: OPA does not merge it).
    if to4(&first).is_some() {
        first = [&V4_IN_V6_PREFIX[..], &first].concat();
    }
    let mut last = first.clone();
    let mask = &network.mask;
    for i in 0..mask.len() {
        let inverted = !mask[mask.len() - i - 1];
        let slot = 16usize
            .checked_sub(i + 1)
            .and_then(|at| last.get_mut(at))
            .ok_or_else(|| format!("{ABORTS}index out of range (address and mask do not fit)"))?;
        *slot |= inverted;
    }
    Ok((first, last))
}

/// `GetPreviousIP`.
fn previous_ip(ip: &[u8]) -> Vec<u8> {
    if ip_equal(ip, &to16(&[0, 0, 0, 0])) || ip_equal(ip, &[0u8; 16]) {
        return ip.to_vec();
    }
    let mut previous = ip.to_vec();
    let lower = if to4(ip).is_some() { 12 } else { 0 };
    let mut overflow = false;
    let mut i = ip.len();
    while i > lower {
        i -= 1;
        if overflow || i == ip.len() - 1 {
            previous[i] = previous[i].wrapping_sub(1);
        }
        overflow = ip[i] == 0 && previous[i] == 255;
    }
    previous
}

/// `getNextIP`.
fn next_ip(ip: &[u8]) -> Vec<u8> {
    let upper_v4 = to16(&[255, 255, 255, 255]);
    if ip_equal(ip, &upper_v4) || ip_equal(ip, &[0xffu8; 16]) {
        return ip.to_vec();
    }
    match ip.len() {
        4 => {
            let n = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]).wrapping_add(1);
            n.to_be_bytes().to_vec()
        }
        16 => {
            let low = u64::from_be_bytes(ip[8..].try_into().unwrap_or_default()).wrapping_add(1);
            let mut high = u64::from_be_bytes(ip[..8].try_into().unwrap_or_default());
            if low == 0 {
                high = high.wrapping_add(1);
            }
            [high.to_be_bytes(), low.to_be_bytes()].concat()
        }
        _ => ip.to_vec(),
    }
}

/// `net.IP.Equal`.
fn ip_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() == b.len() {
        return a == b;
    }
    match (to4(a), to4(b)) {
        (Some(x), Some(y)) if a.len() == 4 || b.len() == 4 => x == y,
        _ => false,
    }
}

fn to_int(bytes: &[u8]) -> Result<u128, String> {
    if bytes.len() > 16 && bytes[..bytes.len() - 16].iter().any(|b| *b != 0) {
        return Err(format!("{ABORTS}address out of range"));
    }
    Ok(bytes.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b)))
}

/// `big.Int.Bytes`: big-endian without leading zeros.
fn int_bytes(n: u128) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(16);
    bytes[start..].to_vec()
}

/// `RangeToCIDRs`.
fn range_to_cidrs(first: &[u8], last: &[u8]) -> Result<Vec<IpNet>, String> {
    let mut spanning = spanning_cidr(first, last)?;
    let (spanning_first, spanning_last) = address_range(&spanning)?;
    let mut list: Vec<IpNet> = Vec::new();
    if spanning_first.as_slice() < first {
        let previous = previous_ip(first);
        let bits = if to4(&previous).is_some() { 32 } else { 128 };
        let exclude = IpNet {
            ip: previous,
            mask: cidr_mask(bits, bits),
        };
        let (_, right) = partition(&spanning, &exclude)?;
        let Some(head) = right.first().cloned() else {
            return Err(format!("{ABORTS}index out of range (empty partition)"));
        };
        list.extend(right.into_iter().skip(1));
        spanning = head;
    }
    if spanning_last.as_slice() > last {
        let next = next_ip(last);
        let bits = if to4(&next).is_some() { 32 } else { 128 };
        let exclude = IpNet {
            ip: next,
            mask: cidr_mask(bits, bits),
        };
        let (left, _) = partition(&spanning, &exclude)?;
        list.extend(left);
    } else {
        list.push(spanning);
    }
    Ok(list)
}

/// `createSpanningCIDR`.
fn spanning_cidr(first: &[u8], last: &[u8]) -> Result<IpNet, String> {
    let ipv4 = to4(first).is_some();
    let bits: usize = if ipv4 { 32 } else { 128 };
    let mut size = bits;
    let lowest = to_int(first)?;
    let mut highest = to_int(last)?;
    while size > 0 && lowest < highest {
        size -= 1;
        let shift = bits - size;
        let mask = if shift >= 128 {
            0
        } else {
            !((1u128 << shift) - 1)
        };
        highest &= mask;
    }
    let mut ip = int_bytes(highest);
    if ipv4 {
        ip = [vec![0u8; 10], ip].concat();
    }
    if ip.is_empty() {
        ip = vec![0u8; if ipv4 { 4 } else { 16 }];
    }
    Ok(IpNet {
        ip,
        mask: cidr_mask(size, bits),
    })
}

/// `partitionCIDR`: the networks of `target` left and right of `exclude`.
fn partition(target: &IpNet, exclude: &IpNet) -> Result<(Vec<IpNet>, Vec<IpNet>), String> {
    let ipv4 = to4(&target.ip).is_some();
    let (target_first, target_last) = address_range(target)?;
    let (exclude_first, exclude_last) = address_range(exclude)?;
    let target_size = mask_size(&target.mask);
    let exclude_size = mask_size(&exclude.mask);
    if exclude_last < target_first {
        return Ok((Vec::new(), vec![target.clone()]));
    }
    if target_last < exclude_first {
        return Ok((vec![target.clone()], Vec::new()));
    }
    if target_size >= exclude_size {
        return Ok((Vec::new(), Vec::new()));
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let bits: usize = if ipv4 { 32 } else { 128 };
    let mut prefix = target_size + 1;
    let overflow = || format!("{ABORTS}address out of range");
    let power = |exponent: usize| 1u128.checked_shl(exponent as u32).ok_or_else(overflow);
    let mut lower = to_int(&target_first)?;
    let mut upper = to_int(&to16(&target_first))?
        .checked_add(power(bits - prefix)?)
        .ok_or_else(overflow)?;
    let width = |n: u128| {
        let bytes = int_bytes(n);
        if ipv4 {
            [vec![0u8; 10], bytes].concat()
        } else if bytes.len() < 16 {
            [vec![0u8; 16 - bytes.len()], bytes].concat()
        } else {
            bytes
        }
    };
    while exclude_size >= prefix {
        let (upper_bytes, lower_bytes) = (width(upper), width(lower));
        let matched = if exclude_first.as_slice() >= upper_bytes.as_slice() {
            left.push(IpNet {
                ip: lower_bytes,
                mask: cidr_mask(prefix, bits),
            });
            upper
        } else {
            right.push(IpNet {
                ip: upper_bytes,
                mask: cidr_mask(prefix, bits),
            });
            lower
        };
        prefix += 1;
        if prefix > bits {
            break;
        }
        lower = matched;
        upper = matched
            .checked_add(power(bits - prefix)?)
            .ok_or_else(overflow)?;
    }
    Ok((left, right))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(items: &[&str]) -> Vec<String> {
        let array = Value::from(items.iter().map(|s| Value::from(*s)).collect::<Vec<_>>());
        let out = cidr_merge(&array).expect("merges");
        out.as_set()
            .expect("set")
            .iter()
            .map(|v| v.as_string().expect("string").to_string())
            .collect()
    }

    #[test]
    fn adjacent_networks_merge() {
        assert_eq!(merged(&["10.0.0.0/24", "10.0.1.0/24"]), ["10.0.0.0/23"]);
        assert_eq!(
            merged(&["192.0.128.0/24", "192.0.129.0/24", "192.0.130.0/24"]),
            ["192.0.128.0/23", "192.0.130.0/24"]
        );
        assert_eq!(merged(&["10.1.2.3"]), ["10.1.2.3/8"]);
    }
}
