//! `kogge group …`: groups whose members may sit on any provider (SPEC.md sections 18
//! to 20). The groups live in the device's encrypted state; changes go to the group's
//! sequencer (the creator's provider), messages are sealed once and handed over once.

use std::path::Path;
use std::sync::Arc;

use kogge::address::Address;
use kogge::client::ClientEvent;
use kogge::envelope::{Content, Text};
use kogge::group::{GroupAction, GroupId, GroupRole};
use kogge::protocol::ProtocolError;

use crate::net::{self, Connection};
use crate::{
    Failure, LINGER, LIST_REFRESH_WAIT, deadline, ignore, note_inbox, open, parse_address,
};

/// Parses a group id as `kogge group list` prints it (32 hex digits).
pub(crate) fn parse_group(s: &str) -> Result<GroupId, Failure> {
    let s = s.trim();
    let bytes: Option<Vec<u8>> = (s.len() == 32)
        .then(|| {
            (0..16)
                .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    bytes
        .and_then(|b| GroupId::from_slice(&b))
        .ok_or_else(|| Failure::new(format!("{s:?} is not a group id (32 hex digits)")))
}

fn stopped(e: impl std::fmt::Display) -> Failure {
    Failure::new(format!("the client stopped: {e}"))
}

/// Opens the data directory and connects.
async fn connect(
    dir: &Path,
    key_file: Option<&Path>,
    timeout: u64,
) -> Result<(Connection, tokio::time::Instant), Failure> {
    let (vault, account, profile) = open(dir, key_file)?;
    let until = deadline(timeout);
    let mut conn = Connection::start(Arc::new(vault), account, profile).await?;
    conn.wait_online(until, &mut ignore).await?;
    Ok((conn, until))
}

/// Makes sure the device lists of `members` are held (their identity keys go into the
/// group): fetched now if not.
async fn lists(conn: &mut Connection, members: &[Address]) -> Result<(), Failure> {
    for m in members {
        if !net::refresh_list(conn, m, LIST_REFRESH_WAIT, &mut ignore).await? {
            return Err(Failure::new(format!(
                "cannot fetch {m}'s device list: is the address right and its provider reachable?"
            )));
        }
    }
    Ok(())
}

/// Waits for the group change of `group` to apply here (`GroupChanged` at `epoch` or
/// later) or fail.
async fn changed(
    conn: &mut Connection,
    until: tokio::time::Instant,
    group: GroupId,
    epoch: u64,
) -> Result<(), Failure> {
    loop {
        match conn.next(until).await? {
            Some(ClientEvent::GroupChanged {
                group: g, epoch: e, ..
            }) if g == group && e >= epoch => {
                return Ok(());
            }
            Some(ClientEvent::GroupChangeFailed { group: g, error }) if g == group => {
                return Err(refused(&error));
            }
            Some(_) => {}
            None => return Err(conn.unreachable("waiting for the group's sequencer")),
        }
    }
}

fn refused(e: &ProtocolError) -> Failure {
    let hint = match e.raw_code.as_str() {
        "group_conflict" => " (another change came first: run the command again)",
        "group_refused" => " (the change does not apply to the group as it is)",
        _ => "",
    };
    Failure::new(format!("the group change was refused: {e}{hint}"))
}

async fn finish(conn: Connection) -> Result<(), Failure> {
    let mut conn = conn;
    let linger = tokio::time::Instant::now() + LINGER;
    let _ = conn
        .wait_for(linger, |c| c.pending_messages() == 0, &mut ignore)
        .await;
    note_inbox(&conn);
    conn.close().await
}

/// `kogge group create --title T MEMBER…`
pub(crate) async fn create(
    dir: &Path,
    key_file: Option<&Path>,
    title: &str,
    members: &[String],
    timeout: u64,
) -> Result<(), Failure> {
    let members: Vec<Address> = members
        .iter()
        .map(|m| parse_address(m))
        .collect::<Result<_, _>>()?;
    let (mut conn, until) = connect(dir, key_file, timeout).await?;
    lists(&mut conn, &members).await?;
    let title = title.to_owned();
    let m = members.clone();
    let group = conn
        .driver()
        .with_client(move |c, now| c.create_group(now, &title, &m))
        .await
        .map_err(stopped)?
        .map_err(|e| Failure::new(format!("cannot create the group: {e}")))?;
    changed(&mut conn, until, group, 0).await?;
    finish(conn).await?;
    println!(
        "created group {group} with {} other member(s)",
        members.len()
    );
    Ok(())
}

/// `kogge group add|remove|leave|title|admin GROUP …`
pub(crate) async fn change(
    dir: &Path,
    key_file: Option<&Path>,
    group: &str,
    what: Change,
    timeout: u64,
) -> Result<(), Failure> {
    let group = parse_group(group)?;
    let (mut conn, until) = connect(dir, key_file, timeout).await?;
    if let Change::Add(members) = &what {
        lists(&mut conn, members).await?;
    }
    let action = what;
    let epoch = conn
        .driver()
        .with_client(move |c, now| -> Result<u64, Failure> {
            let state = c
                .group(group)
                .ok_or_else(|| Failure::new(format!("this device holds no group {group}")))?;
            let epoch = state.epoch() + 1;
            let action = match action {
                Change::Add(members) => GroupAction::Add(
                    members
                        .iter()
                        .map(|a| c.group_member(a, GroupRole::Member))
                        .collect::<Result<_, _>>()
                        .map_err(|e| Failure::new(e.to_string()))?,
                ),
                Change::Remove(members) => GroupAction::Remove(members),
                Change::Leave => GroupAction::Leave,
                Change::Title(t) => GroupAction::SetTitle(t),
                Change::Role(member, role) => GroupAction::SetRole { member, role },
            };
            c.change_group(now, group, action)
                .map_err(|e| Failure::new(format!("cannot make the change: {e}")))?;
            Ok(epoch)
        })
        .await
        .map_err(stopped)??;
    changed(&mut conn, until, group, epoch).await?;
    finish(conn).await?;
    println!("group {group} is at epoch {epoch}");
    Ok(())
}

/// A change, as the command line names it.
pub(crate) enum Change {
    Add(Vec<Address>),
    Remove(Vec<Address>),
    Leave,
    Title(String),
    Role(Address, GroupRole),
}

/// `kogge group send GROUP TEXT`
pub(crate) async fn send(
    dir: &Path,
    key_file: Option<&Path>,
    group: &str,
    text: String,
    timeout: u64,
) -> Result<(), Failure> {
    let group = parse_group(group)?;
    let (mut conn, until) = connect(dir, key_file, timeout).await?;
    // A fresh client each run: look at the members' current device lists first, so a
    // device added since gets the sender key.
    let members: Vec<Address> = conn
        .driver()
        .with_client(move |c, _| {
            c.group(group)
                .map(|g| g.members().map(|m| m.address).collect())
                .unwrap_or_default()
        })
        .await
        .map_err(stopped)?;
    if members.is_empty() {
        return Err(Failure::new(format!("this device holds no group {group}")));
    }
    for m in &members {
        let _ = net::refresh_list(&mut conn, m, LIST_REFRESH_WAIT, &mut ignore).await?;
    }
    let content = Content::Text(Text::plain(text));
    let id = conn
        .driver()
        .with_client(move |c, now| c.send_group(now, group, content))
        .await
        .map_err(stopped)?
        .map_err(|e| Failure::new(format!("cannot send to the group: {e}")))?;
    let mut warnings = Vec::new();
    let outcome = loop {
        match conn.next(until).await? {
            Some(ClientEvent::DeliveredToProvider { message_id }) if message_id == id => {
                break Ok(());
            }
            Some(ClientEvent::GroupMessageFailed {
                message_id, reason, ..
            }) if message_id == id => {
                break Err(Failure::new(format!(
                    "the provider did not take the message: {reason}"
                )));
            }
            Some(ClientEvent::Undeliverable {
                message_id,
                recipient,
                device,
                reason,
            }) if message_id == id => warnings.push(match device {
                Some(d) => format!("not readable by {recipient} device {d}: {reason}"),
                None => format!("not readable by {recipient}: {reason}"),
            }),
            Some(_) => {}
            None => break Err(conn.unreachable("waiting for the provider to accept the message")),
        }
    };
    for w in &warnings {
        eprintln!("kogge: warning: {w}");
    }
    let closed = finish(conn).await;
    outcome?;
    closed?;
    println!("sent {id} to group {group}: stored by the provider");
    Ok(())
}

/// `kogge group list`
pub(crate) fn list(dir: &Path, key_file: Option<&Path>) -> Result<(), Failure> {
    let (_, account, _) = open(dir, key_file)?;
    let me = account.device().address().clone();
    let mut any = false;
    for g in account.groups() {
        any = true;
        let status = match g.role(&me) {
            Some(GroupRole::Admin) => "admin",
            Some(_) => "member",
            None => "no longer a member",
        };
        println!(
            "{}  {:?}  epoch {}  sequencer {}  ({status})",
            g.id(),
            g.title(),
            g.epoch(),
            g.sequencer().domain
        );
        for m in g.members() {
            let role = match m.role {
                GroupRole::Admin => "admin",
                _ => "member",
            };
            println!("    {}  {role}", m.address);
        }
    }
    if !any {
        println!("no groups");
    }
    Ok(())
}
