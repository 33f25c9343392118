//! Binding the listening sockets (in the master, before any fork).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listening sockets with the address each is bound to.
pub type Listeners = Vec<(SocketAddr, TcpListener)>;

/// Binds one listener: close-on-exec (socket2 sets it atomically), `SO_REUSEADDR`, IPv6 sockets
/// IPv6-only (so `0.0.0.0:P` and `[::]:P` can both be listed), non-blocking.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds every address, or names the one that failed.
pub fn bind_all(addrs: &[SocketAddr], backlog: u32) -> Result<Vec<TcpListener>, crate::MasterError> {
    addrs.iter().map(|&addr| bind(addr, backlog).map_err(|source| crate::MasterError::Bind { addr, source })).collect()
}
