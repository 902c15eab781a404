//! The count of packets the anti-spoofing chain of our nft table dropped (see [`super::ruleset`]):
//! read over nfnetlink (one request, one answer, no `nft` child per scrape) for `/metrics`,
//! and watched, so that the log says when the VM forges its source address.
//!
//! [`request`] and [`packets`] are the pure halves (bytes out, bytes in); [`read_count`] is
//! the socket. The watch sleeps until the kernel sends a forged packet to our nflog group
//! (the drop rule does, at most once a minute), so an idle VM costs it no wakeup; where the
//! node has no nflog it reads the counter every few seconds instead.

use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag};
use nix::sys::time::TimeVal;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{config_request, ConfigCmd, ConfigMode};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket as _, AsyncSocketExt as _};

use super::ruleset::{SpoofWake, SPOOFED_COUNTER, SPOOFED_LOG_GROUP, TABLE};
use crate::lan::drop_log::LogLimit;

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
const NFPROTO_IPV4: u8 = 2;
/// The `ip6 kvm_manager` table's counter (issue 23).
const NFPROTO_IPV6: u8 = 10;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// An attribute type without its NLA_F_NESTED and NLA_F_NET_BYTEORDER flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How often the watch reads the counter without nflog, and how often at most it logs.
const POLL: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Woken by a forged packet, the watch waits this long before it reads the counter, so that a
/// burst is reported as one number.
const SETTLE: Duration = Duration::from_secs(1);
/// The kernel answers at once; this only bounds a scrape if it ever did not.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(500);

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `NFT_MSG_GETOBJ` for our counter in `table ip kvm_manager`.
#[cfg(test)]
pub(crate) fn request(seq: u32) -> Vec<u8> {
    request_in(NFPROTO_IPV4, seq)
}

/// The same for the table of `family` (`ip` or `ip6`).
fn request_in(family: u8, seq: u32) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0];
    push_attr(&mut body, NFTA_OBJ_TABLE, format!("{TABLE}\0").as_bytes());
    push_attr(
        &mut body,
        NFTA_OBJ_NAME,
        format!("{SPOOFED_COUNTER}\0").as_bytes(),
    );
    push_attr(&mut body, NFTA_OBJ_TYPE, &NFT_OBJECT_COUNTER.to_be_bytes());
    let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ).to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

/// The attributes in `bytes` as (type without flags, value).
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]));
        let kind = u16::from_ne_bytes([*bytes.get(2)?, *bytes.get(3)?]) & NLA_TYPE_MASK;
        let value = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// The packet count in the kernel's answer to [`request`]; an error answer (no such table or
/// counter: `ENOENT`) as that error.
pub(crate) fn packets(answer: &[u8]) -> std::io::Result<u64> {
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    let header = answer.get(..NLMSG_HDRLEN).ok_or_else(invalid)?;
    let len = usize::try_from(u32::from_ne_bytes([
        header[0], header[1], header[2], header[3],
    ]))
    .map_err(|_| invalid())?;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = answer.get(NLMSG_HDRLEN..len).ok_or_else(invalid)?;
    if kind == NLMSG_ERROR {
        let code = body.get(..4).ok_or_else(invalid)?;
        let errno = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWOBJ {
        return Err(invalid());
    }
    let data = attrs(body.get(NFGENMSG_LEN..).ok_or_else(invalid)?)
        .find(|(kind, _)| *kind == NFTA_OBJ_DATA)
        .ok_or_else(invalid)?
        .1;
    let value = attrs(data)
        .find(|(kind, _)| *kind == NFTA_COUNTER_PACKETS)
        .ok_or_else(invalid)?
        .1;
    Ok(u64::from_be_bytes(value.try_into().map_err(|_| invalid())?))
}

/// Packets dropped so far because of a forged source (our ip table must exist), IPv4 and
/// IPv6 together: the ip6 table exists only while the VM has IPv6.
pub(crate) fn read_count() -> std::io::Result<u64> {
    let v4 = read_family(NFPROTO_IPV4)?;
    Ok(v4.saturating_add(read_family(NFPROTO_IPV6).unwrap_or(0)))
}

fn read_family(family: u8) -> std::io::Result<u64> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        socket::SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        socket::SockProtocol::NetlinkNetFilter,
    )?;
    let timeout = TimeVal::new(0, i64::try_from(RECEIVE_TIMEOUT.as_micros()).unwrap_or(0));
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    socket::send(fd.as_raw_fd(), &request_in(family, 1), MsgFlags::empty())?;
    let mut answer = vec![0u8; 8192];
    let len = socket::recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
    packets(&answer[..len])
}

/// Exports the counter on `/metrics` (read at each scrape), and warns, at most once a minute,
/// when it grew: woken by nflog (`wake`), or reading it every few seconds.
pub(crate) async fn watch(vm_ip: std::net::Ipv4Addr, wake: SpoofWake) {
    crate::metrics::watch_spoofed(read_count);
    let mut report = Report::new(vm_ip);
    let nflog = match wake {
        SpoofWake::Nflog => match bind_nflog().await {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(error = %e, group = SPOOFED_LOG_GROUP, "could not listen to \
                    nflog; the spoofed-packet counter is read every few seconds instead");
                None
            }
        },
        SpoofWake::Poll => None,
    };
    match nflog {
        Some(socket) => loop {
            // Any datagram means "the drop rule fired" (its content is not needed); an error
            // (ENOBUFS after a burst) means the same.
            let _ = socket.recv_from_full().await;
            tokio::time::sleep(SETTLE).await;
            report.read();
            // The limit in the rule admits one packet a minute: what a burst forged after the
            // first one is read once more then, and not again until the next.
            tokio::time::sleep(LOG_EVERY).await;
            report.read();
        },
        None => {
            let mut interval = tokio::time::interval(POLL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                report.read();
            }
        }
    }
}

/// A netlink socket that receives what the drop rule sends to [`SPOOFED_LOG_GROUP`]: no
/// packet data, only the notice.
async fn bind_nflog() -> std::io::Result<netlink_sys::TokioSocket> {
    let mut socket = netlink_sys::TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind_auto()?;
    let mut request = config_request(
        NetfilterProtoFamily::Unspec,
        SPOOFED_LOG_GROUP,
        vec![ConfigCmd::Bind.into(), ConfigMode::NONE.into()],
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes).await?;
    let (answer, _) = tokio::time::timeout(RECEIVE_TIMEOUT, socket.recv_from_full())
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    match NetlinkMessage::<NetfilterMessage>::deserialize(&answer).map(|m| m.payload) {
        Ok(NetlinkPayload::Error(e)) if e.code.is_some() => Err(e.to_io()),
        Ok(NetlinkPayload::Error(_)) => Ok(socket),
        Ok(other) => Err(std::io::Error::other(format!(
            "unexpected answer {other:?}"
        ))),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// What the log said last: the count then, and when.
struct Report {
    vm_ip: std::net::Ipv4Addr,
    reported: u64,
    limit: LogLimit,
    failures: LogLimit,
}

impl Report {
    fn new(vm_ip: std::net::Ipv4Addr) -> Self {
        Self {
            vm_ip,
            reported: 0,
            limit: LogLimit::new(1, LOG_EVERY),
            failures: LogLimit::new(1, LOG_EVERY),
        }
    }

    /// Reads the counter and warns when it grew since the last warning.
    fn read(&mut self) {
        match read_count() {
            Ok(total) if total > self.reported => {
                if self.limit.admit(Instant::now()).is_some() {
                    tracing::warn!(
                        dropped = total - self.reported,
                        total,
                        vm_ip = %self.vm_ip,
                        "dropped packets from the VM whose source address is not VM_IP (or, \
                         for IPv6, not in VM_GW6's /64: a forged source); see \
                         kvm_manager_spoofed_packets_total"
                    );
                    self.reported = total;
                }
            }
            // A smaller count: the table was replaced (another start in this pod).
            Ok(total) => self.reported = self.reported.min(total),
            Err(e) => {
                if self.failures.admit(Instant::now()).is_some() {
                    tracing::debug!(error = %e, "could not read the spoofed-packet counter");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip6_request_differs_only_in_its_family() {
        let (v4, v6) = (request(3), request_in(NFPROTO_IPV6, 3));
        assert_eq!(v6[NLMSG_HDRLEN], NFPROTO_IPV6);
        assert_eq!(v4[NLMSG_HDRLEN + 1..], v6[NLMSG_HDRLEN + 1..]);
        assert_eq!(v4[..NLMSG_HDRLEN], v6[..NLMSG_HDRLEN]);
    }

    #[test]
    fn the_request_names_our_table_and_counter() {
        let bytes = request(7);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x0a13);
        let found: Vec<(u16, Vec<u8>)> = attrs(&bytes[NLMSG_HDRLEN + NFGENMSG_LEN..])
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(
            found,
            [
                (1, b"kvm_manager\0".to_vec()),
                (2, b"spoofed\0".to_vec()),
                (3, vec![0, 0, 0, 1]),
            ]
        );
    }

    /// An answer as the kernel builds it: NEWOBJ, table, name, type, nested data.
    fn answer(packets: u64) -> Vec<u8> {
        let mut data = Vec::new();
        push_attr(&mut data, 1, &4242u64.to_be_bytes());
        push_attr(&mut data, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        let mut body = vec![NFPROTO_IPV4, 0, 0, 5];
        push_attr(&mut body, NFTA_OBJ_TABLE, b"kvm_manager\0");
        push_attr(&mut body, NFTA_OBJ_NAME, b"spoofed\0");
        push_attr(&mut body, NFTA_OBJ_TYPE, &1u32.to_be_bytes());
        push_attr(&mut body, NFTA_OBJ_DATA | 0x8000, &data);
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(16 + body.len()).expect("small").to_ne_bytes());
        out.extend_from_slice(&0x0a12u16.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_packet_count_is_read_from_the_nested_counter_data() {
        assert_eq!(packets(&answer(123_456)).expect("a count"), 123_456);
    }

    #[test]
    fn an_error_answer_is_that_error_and_garbage_is_invalid() {
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        assert_eq!(
            packets(&error).expect_err("ENOENT").raw_os_error(),
            Some(libc::ENOENT)
        );
        let cut = answer(1);
        for len in [0, 10, 20, cut.len() - 4] {
            assert!(packets(&cut[..len]).is_err(), "{len} bytes");
        }
    }
}
