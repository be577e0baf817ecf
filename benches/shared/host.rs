//! What the benches read about the host from `/proc` (Linux; elsewhere each reads 0 or
//! nothing): shared by `benches/relay.rs` and `benches/transport.rs` through `#[path]`.

/// CPU time (user + system) of the calling thread in nanoseconds
/// (`/proc/thread-self/schedstat`).
pub(crate) fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// UDP datagrams the kernel dropped because a socket's receive buffer was full
/// (`RcvbufErrors` of `/proc/net/snmp`, the whole machine's count; 0 where it cannot be read).
pub(crate) fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The 1, 5 and 15-minute load averages (`/proc/loadavg`).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
