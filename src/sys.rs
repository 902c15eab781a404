//! The only module with `unsafe`: thin wrappers over libc calls that std and nix do not cover
//! safely. Each block states why it is sound.

/// Registers a signalfd with tokio's reactor (readable interest only).
pub(crate) fn register_signalfd(
    fd: nix::sys::signalfd::SignalFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<nix::sys::signalfd::SignalFd>> {
    // SAFETY: `SignalFd` owns its descriptor (an `OwnedFd`) for its whole lifetime and its
    // `as_raw_fd` always returns that same descriptor; the `AsyncFd` takes ownership of it, so
    // the descriptor stays open and unchanged until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// A timerfd in the form tokio's reactor takes (nix's `TimerFd` offers `AsFd` only).
pub(crate) struct Timer(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&self.0))
    }
}

/// Registers an armed timerfd with tokio's reactor (readable interest only).
pub(crate) fn register_timerfd(
    fd: nix::sys::timerfd::TimerFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<Timer>> {
    // SAFETY: `TimerFd` owns its descriptor (an `OwnedFd`) for its whole lifetime and `Timer`'s
    // `as_raw_fd` always returns that same descriptor; the `AsyncFd` takes ownership of it, so
    // the descriptor stays open and unchanged until the `AsyncFd` is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(Timer(fd), tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// `ATF_COM` from `<net/if_arp.h>`: the entry is complete (has a hardware address).
const ATF_COM: libc::c_int = 0x02;

/// Writes the neighbour entry `ip` → `mac` on `device` (SIOCSARP), through the socket `fd`.
///
/// A DHCP server must unicast an OFFER/ACK to an address the client has not configured yet
/// (RFC 2131 §4.1): the client cannot answer ARP for it, so the kernel needs the entry first.
pub(crate) fn set_arp_entry(
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

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, capped by the
/// kernel's `fs.nr_open` (a soft limit above it is refused). Returns (before, after).
///
/// The soft default (often 1024) is a convention for programs that use `select()`; our
/// sockets are polled with epoll, and every HTTP connection from the cluster costs one. qemu
/// raises its own limit the same way, so children lose nothing they would not take anyway.
pub(crate) fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let target = open_files_target(soft, hard, nr_open);
    if target != soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok((soft, target))
}

/// The soft limit on open files now in force.
pub(crate) fn open_files_limit() -> std::io::Result<u64> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    Ok(soft)
}

/// The soft limit to ask for: the hard one, within `nr_open`, never below what we have.
fn open_files_target(soft: u64, hard: u64, nr_open: u64) -> u64 {
    hard.min(nr_open).max(soft)
}

/// Hands the heap's free pages back to the system (glibc keeps them for reuse otherwise).
/// Returns whether any memory was released.
#[cfg(target_env = "gnu")]
pub(crate) fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists under its
    // arena locks; it touches no memory we own and takes no pointer from us.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries have no `malloc_trim`; their allocators decide on their own.
#[cfg(not(target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_target_is_the_hard_limit_within_nr_open() {
        assert_eq!(open_files_target(1024, 524_288, 1_048_576), 524_288);
        assert_eq!(
            open_files_target(1024, u64::MAX, 1_048_576),
            1_048_576,
            "an unlimited hard limit is capped by nr_open"
        );
        assert_eq!(open_files_target(4096, 4096, 1_048_576), 4096);
        assert_eq!(
            open_files_target(2048, 1024, 1_048_576),
            2048,
            "never lowered"
        );
    }
}
