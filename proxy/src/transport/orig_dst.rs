//! The original destination of a connection redirected by iptables (SO_ORIGINAL_DST),
//! through nix's safe wrapper so this crate needs no unsafe code.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::net::TcpStream;

/// Where the client meant to connect, if the connection was redirected; `None` when it
/// was addressed to the proxy directly (explicit mode).
pub fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let addr = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    let dst = SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)));
    match stream.local_addr() {
        Ok(local) if local == dst => None,
        _ => Some(dst),
    }
}
