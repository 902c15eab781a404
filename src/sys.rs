//! The only module with `unsafe`: thin wrappers over libc calls that std and nix do not cover
//! safely. Each block states why it is sound.

/// Registers a signalfd with tokio's reactor (readable interest only).
pub fn register_signalfd(
    fd: nix::sys::signalfd::SignalFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<nix::sys::signalfd::SignalFd>> {
    // SAFETY: `SignalFd` owns its descriptor (an `OwnedFd`) for its whole lifetime and its
    // `as_raw_fd` always returns that same descriptor; the `AsyncFd` takes ownership of it, so
    // the descriptor stays open and unchanged until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// `ATF_COM` from `<net/if_arp.h>`: the entry is complete (has a hardware address).
const ATF_COM: libc::c_int = 0x02;

/// Writes the neighbour entry `ip` → `mac` on `device` (SIOCSARP), through the socket `fd`.
///
/// A DHCP server must unicast an OFFER/ACK to an address the client has not configured yet
/// (RFC 2131 §4.1): the client cannot answer ARP for it, so the kernel needs the entry first.
pub fn set_arp_entry(
    fd: &impl std::os::fd::AsRawFd,
    device: &str,
    ip: std::net::Ipv4Addr,
    mac: [u8; 6],
) -> std::io::Result<()> {
    // SAFETY: `arpreq` is a plain C struct of integers and byte arrays, valid when zeroed.
    let mut request: libc::arpreq = unsafe { std::mem::zeroed() };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in (16 bytes) and sockaddr (16 bytes) have the same size, and arp_pa
    // is a sockaddr that the kernel reads as the sockaddr_in its family says it is.
    request.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(address) };
    request.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (slot, byte) in request.arp_ha.sa_data.iter_mut().zip(mac) {
        *slot = byte as libc::c_char;
    }
    request.arp_flags = ATF_COM;
    let name = device.as_bytes();
    if name.len() >= request.arp_dev.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (slot, byte) in request.arp_dev.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCSARP reads one `arpreq` through the pointer, which points at our live,
    // initialised `request` for the whole call; `fd` is an open socket owned by the caller.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSARP, &request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
