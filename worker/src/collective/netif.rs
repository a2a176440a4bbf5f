//! Which network interface carries an address: NCCL's bootstrap and socket
//! transport pick an interface on their own (the first non-loopback one by
//! default), which on a multi-homed node need not be the one the other
//! ranks reach this worker by (`--advertise-host`). The NCCL backend sets
//! `NCCL_SOCKET_IFNAME` to the interface found here unless the operator
//! set it. Linux `getifaddrs` only; no other networking here.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

/// Every (interface name, address) of this host.
pub fn addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: the name is NUL-terminated; the address is a sockaddr of
        // the family it names.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        let ip = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    // SAFETY: frees the list allocated above, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interface holding `host` (an IP or a name resolving to one of this
/// host's addresses); None when no local interface has it.
pub fn interface_of(host: &str) -> Option<String> {
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect(),
    };
    let local = addresses().ok()?;
    ips.iter()
        .find_map(|ip| local.iter().find(|(_, a)| a == ip).map(|(name, _)| name.clone()))
}

/// NCCL_SOCKET_IFNAME for `advertise_host`: the operator's value wins;
/// else the interface holding the address (None: leave NCCL's choice).
pub fn nccl_socket_ifname(operator: Option<&str>, advertise_host: &str) -> Option<String> {
    match operator {
        Some(v) if !v.is_empty() => None,
        _ => interface_of(advertise_host).map(|name| format!("={name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_address_is_found_on_the_loopback_interface() {
        let lo = interface_of("127.0.0.1").expect("127.0.0.1 is on an interface");
        let all = addresses().unwrap();
        assert!(all.iter().any(|(n, ip)| n == &lo && ip.is_loopback()), "{all:?}");
        // '=' makes NCCL match the name exactly (not as a prefix).
        assert_eq!(nccl_socket_ifname(None, "127.0.0.1"), Some(format!("={lo}")));
    }

    #[test]
    fn the_operators_setting_wins_and_foreign_addresses_give_nothing() {
        assert_eq!(nccl_socket_ifname(Some("eth9"), "127.0.0.1"), None);
        // TEST-NET-3: never assigned to a host.
        assert_eq!(interface_of("203.0.113.77"), None);
        assert_eq!(nccl_socket_ifname(Some(""), "203.0.113.77"), None);
    }
}
