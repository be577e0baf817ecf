//! How things are printed: times, fingerprints, inbox items.

use super::state::{InboxItem, ItemKind};
use super::vault::to_hex;

/// A Unix time in milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Digits in groups of five.
pub(crate) fn grouped(digits: &str) -> String {
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn id(bytes: &[u8]) -> String {
    to_hex(bytes).to_string()
}

/// One line per inbox item. Stable prefixes (`message`, `delivered`, `read`,
/// `undeliverable`, `identity-changed`, `rejected`) make the output easy to filter.
pub(crate) fn item(i: &InboxItem) -> String {
    let t = time(i.time_ms);
    match ItemKind::try_from(i.kind).unwrap_or(ItemKind::Unspecified) {
        ItemKind::Message => {
            let conv = if i.peer == i.sender {
                String::new()
            } else {
                format!(" in conversation with {}", i.peer)
            };
            let gap = if i.missing > 0 {
                format!(
                    " [{} earlier message(s) from this device not received yet]",
                    i.missing
                )
            } else {
                String::new()
            };
            format!(
                "{t} message from {} device {} ({}){conv} id {}{gap}: {}",
                i.sender,
                id(&i.device),
                i.identity,
                id(&i.message_id),
                i.text
            )
        }
        ItemKind::Delivered => format!(
            "{t} delivered {} to {} device {}",
            id(&i.message_id),
            i.sender,
            id(&i.device)
        ),
        ItemKind::Read => format!(
            "{t} read {} by {} device {}",
            id(&i.message_id),
            i.sender,
            id(&i.device)
        ),
        ItemKind::Undeliverable => {
            let device = if i.device.is_empty() {
                "every device".to_owned()
            } else {
                format!("device {}", id(&i.device))
            };
            format!(
                "{t} undeliverable {} to {} {device}: {}",
                id(&i.message_id),
                i.peer,
                i.text
            )
        }
        ItemKind::IdentityChanged => format!(
            "{t} identity-changed {}: {} (verify the safety number again: kogge fingerprint {})",
            i.peer, i.text, i.peer
        ),
        ItemKind::Rejected => format!(
            "{t} rejected an envelope claiming to be from {}: {}",
            if i.sender.is_empty() { "?" } else { &i.sender },
            i.text
        ),
        ItemKind::GroupMessage => format!(
            "{t} group {} message from {} device {} id {}: {}",
            id(&i.group),
            i.sender,
            id(&i.device),
            id(&i.message_id),
            i.text
        ),
        ItemKind::GroupChanged => {
            format!(
                "{t} group {} changed by {}: {}",
                id(&i.group),
                i.sender,
                i.text
            )
        }
        ItemKind::GroupRefused => format!(
            "{t} group {}: refused {}",
            if i.group.is_empty() {
                "?".to_owned()
            } else {
                id(&i.group)
            },
            i.text
        ),
        ItemKind::Unspecified => format!("{t} (an entry of a later version)"),
    }
}

/// A group change's action as text.
pub(crate) fn action(a: &kogge::group::GroupAction) -> String {
    use kogge::group::{GroupAction as A, GroupRole};
    let names = |list: &mut dyn Iterator<Item = &kogge::address::Address>| {
        list.map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
    };
    match a {
        A::Create { title, members, .. } => format!(
            "created {title:?} with {}",
            names(&mut members.iter().map(|m| &m.address))
        ),
        A::Add(members) => format!("added {}", names(&mut members.iter().map(|m| &m.address))),
        A::Remove(members) => format!("removed {}", names(&mut members.iter())),
        A::Leave => "left".to_owned(),
        A::SetRole { member, role } => format!(
            "made {member} {}",
            if *role == GroupRole::Admin {
                "an admin"
            } else {
                "a member"
            }
        ),
        A::SetTitle(t) => format!("set the title to {t:?}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::time(1_795_651_200_000), "2026-11-26T00:00:00.000Z");
    }
}
