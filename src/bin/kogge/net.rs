//! A connection of this device to its provider: a [`ClientDriver`] whose persistence hook
//! writes the state file (account, profile, inbox) after every step of the client and
//! before any of that step's frames leave, so that nothing is acknowledged to the
//! provider that is not on disk.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kogge::address::Address;
use kogge::client::{AuthFailure, Client, ClientConfig, ClientEvent, IdentityState};
use kogge::envelope::Content;
use kogge::session::Account;
use kogge::transport::quic::{self, ClientDriver, ClientDriverConfig, DriverEvent};
use rand_chacha::ChaCha20Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{InboxItem, ItemKind, Profile};
use super::vault::Vault;
use super::{Failure, os_rng};

/// How often a wait re-checks the client's state when no event comes.
const POLL: Duration = Duration::from_millis(50);

/// A device connected (or connecting) to its provider.
pub(crate) struct Connection {
    driver: ClientDriver<ChaCha20Rng>,
    events: mpsc::Receiver<DriverEvent>,
    profile: Arc<Mutex<Profile>>,
    vault: Arc<Vault>,
    /// The last reason a connection attempt failed, for the timeout message.
    last_failure: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// What a received event becomes in the inbox, if anything.
pub(crate) fn inbox_item(event: &ClientEvent, now_ms: u64) -> Option<InboxItem> {
    let item = |kind: ItemKind| InboxItem {
        kind: kind as i32,
        time_ms: now_ms,
        ..InboxItem::default()
    };
    Some(match event {
        ClientEvent::Message(m) => {
            let Content::Text(t) = &m.content else {
                return None;
            };
            InboxItem {
                peer: m.conversation.as_str().to_owned(),
                sender: m.sender.as_str().to_owned(),
                device: m.sender_device.as_bytes().to_vec(),
                message_id: m.message_id.as_bytes().to_vec(),
                time_ms: m.timestamp.0,
                text: t.body.clone(),
                identity: match m.identity {
                    IdentityState::Verified => "verified",
                    IdentityState::Unverified => "unverified",
                    IdentityState::Changed => "CHANGED",
                }
                .to_owned(),
                missing: m.missing.len() as u64,
                ..item(ItemKind::Message)
            }
        }
        ClientEvent::DeliveredToDevice {
            message_id,
            by,
            device,
        } => InboxItem {
            sender: by.as_str().to_owned(),
            device: device.as_bytes().to_vec(),
            message_id: message_id.as_bytes().to_vec(),
            ..item(ItemKind::Delivered)
        },
        ClientEvent::Read {
            message_id,
            by,
            device,
        } => InboxItem {
            sender: by.as_str().to_owned(),
            device: device.as_bytes().to_vec(),
            message_id: message_id.as_bytes().to_vec(),
            ..item(ItemKind::Read)
        },
        ClientEvent::Undeliverable {
            message_id,
            recipient,
            device,
            reason,
        } => InboxItem {
            peer: recipient.as_str().to_owned(),
            device: device.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            message_id: message_id.as_bytes().to_vec(),
            text: reason.to_string(),
            ..item(ItemKind::Undeliverable)
        },
        ClientEvent::IdentityChanged { address, old, new } => InboxItem {
            peer: address.as_str().to_owned(),
            text: format!(
                "identity fingerprint was {}, is now {}",
                old.fingerprint(address).digits(),
                new.fingerprint(address).digits()
            ),
            ..item(ItemKind::IdentityChanged)
        },
        ClientEvent::Rejected {
            code,
            claimed_sender,
            ..
        } => InboxItem {
            sender: claimed_sender
                .as_ref()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            text: (*code).to_owned(),
            ..item(ItemKind::Rejected)
        },
        ClientEvent::GroupMessage(m) => {
            let Content::Text(t) = &m.content else {
                return None;
            };
            InboxItem {
                sender: m.sender.as_str().to_owned(),
                device: m.sender_device.as_bytes().to_vec(),
                message_id: m.message_id.as_bytes().to_vec(),
                time_ms: m.timestamp.0,
                text: t.body.clone(),
                group: m.group.as_bytes().to_vec(),
                ..item(ItemKind::GroupMessage)
            }
        }
        ClientEvent::GroupChanged {
            group,
            epoch,
            author,
            action,
        } => InboxItem {
            sender: author.as_str().to_owned(),
            text: format!("epoch {epoch}: {}", crate::show::action(action)),
            group: group.as_bytes().to_vec(),
            ..item(ItemKind::GroupChanged)
        },
        ClientEvent::GroupSynced { group, epoch } => InboxItem {
            text: format!("epoch {epoch}: handed over by another device of yours"),
            group: group.as_bytes().to_vec(),
            ..item(ItemKind::GroupChanged)
        },
        ClientEvent::GroupItemRejected { group, code } => InboxItem {
            text: (*code).to_owned(),
            group: group.map(|g| g.as_bytes().to_vec()).unwrap_or_default(),
            ..item(ItemKind::GroupRefused)
        },
        ClientEvent::GroupChangeFailed { group, error } => InboxItem {
            text: format!("a change of ours was not ordered: {error}"),
            group: group.as_bytes().to_vec(),
            ..item(ItemKind::GroupRefused)
        },
        _ => return None,
    })
}

/// Whether two inbox items are the same thing received (times aside).
pub(crate) fn same_item(a: &InboxItem, b: &InboxItem) -> bool {
    a.kind == b.kind
        && a.peer == b.peer
        && a.sender == b.sender
        && a.device == b.device
        && a.message_id == b.message_id
        && a.group == b.group
        && (a.kind != ItemKind::GroupChanged as i32 || a.text == b.text)
}

/// What a failed connection authentication means for the user (SPEC.md 16.3).
fn auth_failure(why: &AuthFailure) -> String {
    match why {
        AuthFailure::Refused(e) => {
            let hint = match e.raw_code.as_str() {
                "registration_closed" => " (this provider does not let new users register)",
                "unknown_user" => " (the provider does not know this user: run `kogge register`)",
                "unknown_device" | "stale_device_list" => {
                    " (this device is not on the user's current device list: it was removed, \
                     or a newer list replaced the one it knows)"
                }
                "identity_mismatch" => {
                    " (the provider holds this address under another identity key)"
                }
                _ => "",
            };
            format!("the provider refused this device: {e}{hint}")
        }
        AuthFailure::WrongKey => "the provider presented another key than the pinned one".into(),
        AuthFailure::WrongProvider { domain } => {
            format!("the endpoint serves {domain:?}, not this device's provider")
        }
        AuthFailure::BadSignature => "the provider's challenge signature is invalid".into(),
        AuthFailure::Timeout => "the provider did not complete authentication in time".into(),
        other => format!("authentication failed: {other:?}"),
    }
}

/// Finds `endpoint` (`host:port`).
async fn resolve(endpoint: &str) -> Result<SocketAddr, Failure> {
    let mut addrs = tokio::net::lookup_host(endpoint).await.map_err(|e| {
        Failure::new(format!(
            "cannot resolve the provider endpoint {endpoint}: {e}"
        ))
    })?;
    addrs
        .next()
        .ok_or_else(|| Failure::new(format!("the provider endpoint {endpoint} has no address")))
}

impl Connection {
    /// Starts connecting `account` to its provider.
    pub(crate) async fn start(
        vault: Arc<Vault>,
        account: Account,
        profile: Profile,
    ) -> Result<Self, Failure> {
        let addr = resolve(&profile.endpoint).await?;
        let mut client = Client::new(
            account,
            ClientConfig::new(profile.provider.clone(), profile.provider_key),
            os_rng()?,
            quic::now(),
        );
        for (address, key) in &profile.verified {
            client.mark_verified(address, *key);
        }
        let profile = Arc::new(Mutex::new(profile));
        let mut config = ClientDriverConfig::new(addr);
        let hook_profile = Arc::clone(&profile);
        let hook_vault = Arc::clone(&vault);
        let mut rng = os_rng()?;
        config.persist = Some(Box::new(
            move |account: &Account, events: &[ClientEvent]| {
                let mut p = hook_profile.lock().unwrap_or_else(PoisonError::into_inner);
                let now = quic::now().0;
                p.push_inbox(events.iter().filter_map(|e| inbox_item(e, now)));
                p.save(&hook_vault, account, &mut rng)
                    .map_err(|e| e.to_string())
            },
        ));
        let (driver, events) = ClientDriver::start(client, config)
            .map_err(|e| Failure::new(format!("cannot start the client: {e}")))?;
        Ok(Self {
            driver,
            events,
            profile,
            vault,
            last_failure: None,
        })
    }

    /// The shared profile (the persistence hook writes it with every step).
    pub(crate) fn profile(&self) -> &Arc<Mutex<Profile>> {
        &self.profile
    }

    /// The driver, for commands.
    pub(crate) fn driver(&self) -> &ClientDriver<ChaCha20Rng> {
        &self.driver
    }

    /// The next client event before `deadline` (`None`: the deadline passed). Failures
    /// that cannot go away by themselves are errors; connection failures are noted for
    /// the timeout message.
    pub(crate) async fn next(&mut self, deadline: Instant) -> Result<Option<ClientEvent>, Failure> {
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(Failure::new("the client stopped")),
                Ok(Some(e)) => e,
            };
            match event {
                DriverEvent::Client(ClientEvent::AuthFailed(why)) => {
                    return Err(Failure::new(auth_failure(&why)));
                }
                DriverEvent::Client(e) => return Ok(Some(e)),
                DriverEvent::ConnectFailed { reason } => {
                    tracing::info!(%reason, "cannot connect to the provider; retrying");
                    self.last_failure = Some(reason);
                }
                DriverEvent::WrongProviderKey {
                    expected,
                    presented,
                } => {
                    return Err(Failure::new(format!(
                        "the provider's address presents key {presented}, not the pinned key \
                         {expected}: wrong endpoint, or someone impersonates the provider"
                    )));
                }
                DriverEvent::PersistFailed { reason } => {
                    return Err(Failure::new(format!("cannot save the state: {reason}")));
                }
                other => tracing::debug!(event = ?other, "driver event"),
            }
        }
    }

    /// Why the provider could not be reached, for a timeout message.
    pub(crate) fn unreachable(&self, what: &str) -> Failure {
        match &self.last_failure {
            Some(r) => Failure::new(format!(
                "timed out {what}: the provider is unreachable ({r})"
            )),
            None => Failure::new(format!("timed out {what}")),
        }
    }

    /// Waits until the client is authenticated to its provider.
    pub(crate) async fn wait_online(
        &mut self,
        deadline: Instant,
        on_event: &mut dyn FnMut(&ClientEvent),
    ) -> Result<(), Failure> {
        loop {
            match self.next(deadline).await? {
                Some(ClientEvent::Online) => return Ok(()),
                Some(e) => on_event(&e),
                None => return Err(self.unreachable("connecting to the provider")),
            }
        }
    }

    /// Waits until `done` holds for the client, handing other events to `on_event`.
    /// Returns `false` if the deadline passed first.
    pub(crate) async fn wait_for<F>(
        &mut self,
        deadline: Instant,
        done: F,
        on_event: &mut dyn FnMut(&ClientEvent),
    ) -> Result<bool, Failure>
    where
        F: Fn(&Client<ChaCha20Rng>) -> bool + Send + Sync + Clone + 'static,
    {
        loop {
            let d = done.clone();
            let ok = self
                .driver
                .with_client(move |c, _| d(c))
                .await
                .map_err(|e| Failure::new(format!("the client stopped: {e}")))?;
            if ok {
                return Ok(true);
            }
            let step = (Instant::now() + POLL).min(deadline);
            match self.next(step).await? {
                Some(e) => on_event(&e),
                None if Instant::now() >= deadline => return Ok(false),
                None => {}
            }
        }
    }

    /// Sends what is queued, closes the connection and writes the state once more (the
    /// inbox may have changed since the last step).
    pub(crate) async fn close(self) -> Result<(), Failure> {
        let Self {
            driver,
            events,
            profile,
            vault,
            ..
        } = self;
        drop(events);
        let client = driver
            .shutdown()
            .await
            .map_err(|e| Failure::new(format!("the client stopped: {e}")))?;
        let p = profile.lock().unwrap_or_else(PoisonError::into_inner);
        p.save(&vault, client.account(), &mut os_rng()?)
            .map_err(Failure::from)
    }
}

/// Fetches `address`'s device list, waiting at most `wait`; returns whether a list is held
/// for it afterwards.
pub(crate) async fn refresh_list(
    conn: &mut Connection,
    address: &Address,
    wait: Duration,
    on_event: &mut dyn FnMut(&ClientEvent),
) -> Result<bool, Failure> {
    let a = address.clone();
    conn.driver()
        .with_client(move |c, now| c.fetch_device_list(now, &a))
        .await
        .map_err(|e| Failure::new(format!("the client stopped: {e}")))?
        .map_err(|e| Failure::new(format!("cannot fetch {address}'s device list: {e}")))?;
    let a = address.clone();
    let deadline = Instant::now() + wait;
    // A fetch that takes longer (the contact's provider unreachable) goes on in the
    // background; the caller carries on with what it holds.
    conn.wait_for(deadline, move |c| !c.is_fetching_device_list(&a), on_event)
        .await?;
    let a = address.clone();
    conn.driver()
        .with_client(move |c, _| held_list(c.account(), &a))
        .await
        .map_err(|e| Failure::new(format!("the client stopped: {e}")))
}

/// Whether the account holds a device list for `address` (its own list for itself).
pub(crate) fn held_list(account: &Account, address: &Address) -> bool {
    address == account.device().address() || account.contacts().get(address).is_some()
}
