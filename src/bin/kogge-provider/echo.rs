//! The interop echo bot: a user `echo@<domain>` that answers every text message with
//! the same text prefixed `echo: `, run inside the provider process as a
//! [`ClientDriver`] connected over loopback QUIC to its own provider (README.md,
//! "Interop testing").
//!
//! Its state lives in `<data_dir>/echo/`: `storage.key` (32 random bytes as hex, 0600)
//! and `account.state`, the account ([`Account::save`]: device keys, prekeys, sessions,
//! device lists) encrypted under that key and rewritten (0600, atomically) after every
//! change, so the bot keeps its identity and sessions across restarts. The identity key
//! signs the device certificate (valid ten years) and the device list once, when the
//! bot is created, and is then dropped: the bot never needs it again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientError, ClientEvent};
use kogge::crypto::Secret;
use kogge::envelope::{Content, Text};
use kogge::identity::{Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKey};
use kogge::session::Account;
use kogge::transport::quic::{self, ClientDriver, ClientDriverConfig, DriverEvent};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Failure, create_private_dir, load_or_create_secret, os_rng, write_private};

/// The bot's local part.
const LOCAL_PART: &str = "echo";
/// What every answer starts with.
const PREFIX: &str = "echo: ";
/// Answers waiting to be handed to the client; more are dropped (and logged).
const MAX_WAITING: usize = 1000;
/// How long to wait before trying again when the client has too much outstanding.
const BUSY_RETRY: Duration = Duration::from_millis(250);
/// Validity of the bot's device certificate.
const CERTIFICATE_DAYS: u64 = 10 * 365;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// The running bot.
pub(crate) struct EchoBot {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl EchoBot {
    /// Loads (or creates) the bot's account in `data_dir` and connects it to the
    /// provider at `provider_addr`, whose key is `provider_key`. Must be called inside a
    /// tokio runtime.
    pub(crate) fn start(
        data_dir: &Path,
        domain: &Domain,
        provider_key: ProviderKey,
        provider_addr: SocketAddr,
    ) -> Result<Self, Failure> {
        let dir = data_dir.join("echo");
        create_private_dir(&dir)?;
        let key = load_or_create_secret(&dir.join("storage.key"), "echo bot storage key")?;
        let state = dir.join("account.state");
        let address = Address::new(LOCAL_PART, domain)
            .map_err(|e| Failure::new(format!("echo bot address: {e}")))?;
        let account = load_or_create_account(&state, &key, &address)?;
        let fingerprint = account
            .own_device_list()
            .identity_key()
            .fingerprint(&address)
            .digits();
        let client = Client::new(
            account,
            ClientConfig::new(domain.clone(), provider_key),
            os_rng()?,
            quic::now(),
        );
        let mut persist_rng = os_rng()?;
        let mut config = ClientDriverConfig::new(provider_addr);
        config.persist = Some(Box::new(move |account: &Account, _: &[ClientEvent]| {
            let blob = account.save(&key, &mut persist_rng);
            write_private(&state, &blob)
                .map_err(|e| format!("echo bot: cannot save its state: {e}"))
        }));
        let (driver, events) = ClientDriver::start(client, config)
            .map_err(|e| Failure::new(format!("cannot start the echo bot: {e}")))?;
        tracing::info!(%address, %fingerprint, "echo bot starting");
        let (answers_tx, answers_rx) = mpsc::channel(MAX_WAITING);
        let listener = tokio::spawn(listen(events, address.clone(), answers_tx));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(answer(driver, answers_rx, stopped, listener));
        Ok(Self { stop, task })
    }

    /// Disconnects the bot (its state is saved after every change already).
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The current time as the library takes it.
fn now() -> UnixMillis {
    quic::now()
}

fn load_or_create_account(
    state: &Path,
    key: &Secret<32>,
    address: &Address,
) -> Result<Account, Failure> {
    match std::fs::read(state) {
        Ok(blob) => Account::restore(&blob, key).map_err(|e| {
            Failure::new(format!(
                "echo bot state {} cannot be restored: {e} (is storage.key the key it was \
                 saved under?)",
                state.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut rng = os_rng()?;
            let now = now();
            let identity = IdentityKeyPair::generate(&mut rng);
            let device = Device::new(
                &identity,
                address.clone(),
                DeviceKeyPair::generate(&mut rng),
                now.saturating_sub(DAY_MS),
                now.saturating_add(CERTIFICATE_DAYS * DAY_MS),
            )
            .map_err(|e| Failure::new(format!("echo bot certificate: {e}")))?;
            let list =
                DeviceList::sign(&identity, address, 1, now, &[device.certificate().clone()])
                    .map_err(|e| Failure::new(format!("echo bot device list: {e}")))?;
            let mut account = Account::new(device, list, now, &mut rng)
                .map_err(|e| Failure::new(format!("echo bot account: {e}")))?;
            account.replenish_prekeys(now, &mut rng);
            write_private(state, &account.save(key, &mut rng))?;
            tracing::info!(%address, file = %state.display(), "created the echo bot's account");
            Ok(account)
        }
        Err(e) => Err(Failure::io("read", state, &e)),
    }
}

/// Reads the driver's events (always, so the driver never waits for this task), logs
/// them, and queues an answer to every text message.
async fn listen(
    mut events: mpsc::Receiver<DriverEvent>,
    me: Address,
    answers: mpsc::Sender<(Address, Text)>,
) {
    while let Some(event) = events.recv().await {
        match event {
            DriverEvent::Client(ClientEvent::Message(m)) => {
                let Content::Text(text) = &m.content else {
                    continue;
                };
                if m.sender == me {
                    continue;
                }
                let answer = Text {
                    media_type: text.media_type.clone(),
                    body: format!("{PREFIX}{}", text.body),
                    reply_to: Some(m.message_id),
                };
                tracing::debug!(from = %m.sender, message_id = %m.message_id, "echo bot: message");
                if answers.try_send((m.sender.clone(), answer)).is_err() {
                    tracing::warn!(from = %m.sender, "echo bot: too many answers waiting; dropping one");
                }
            }
            DriverEvent::Client(ClientEvent::Online) => tracing::info!(%me, "echo bot online"),
            DriverEvent::Client(ClientEvent::Offline) => tracing::debug!("echo bot offline"),
            DriverEvent::Client(ClientEvent::AuthFailed(why)) => {
                tracing::warn!(?why, "echo bot: authentication failed");
            }
            DriverEvent::Client(ClientEvent::Undeliverable {
                message_id,
                recipient,
                reason,
                ..
            }) => {
                tracing::info!(%message_id, %recipient, %reason, "echo bot: answer undeliverable");
            }
            DriverEvent::Client(ClientEvent::Rejected {
                code,
                claimed_sender,
                ..
            }) => tracing::info!(
                code,
                claimed_sender = ?claimed_sender.map(|a| a.to_string()),
                "echo bot: refused an incoming envelope"
            ),
            DriverEvent::Client(e) => tracing::trace!(event = ?e, "echo bot"),
            DriverEvent::ConnectFailed { reason } => {
                tracing::warn!(%reason, "echo bot: cannot connect to its provider");
            }
            DriverEvent::WrongProviderKey {
                expected,
                presented,
            } => tracing::error!(
                %expected, %presented,
                "echo bot: its provider's address presents another key"
            ),
            DriverEvent::PersistFailed { reason } => {
                tracing::error!(%reason, "echo bot stopped: cannot save its state");
            }
            other => tracing::debug!(event = ?other, "echo bot"),
        }
    }
}

/// Hands queued answers to the client, waiting while it is busy, until told to stop.
async fn answer(
    driver: ClientDriver<ChaCha20Rng>,
    mut answers: mpsc::Receiver<(Address, Text)>,
    mut stop: oneshot::Receiver<()>,
    listener: JoinHandle<()>,
) {
    'run: loop {
        let (to, text) = tokio::select! {
            _ = &mut stop => break 'run,
            next = answers.recv() => match next {
                Some(a) => a,
                None => break 'run,
            },
        };
        loop {
            match driver.send(to.clone(), Content::Text(text.clone())).await {
                Ok(Ok(id)) => {
                    tracing::debug!(%to, message_id = %id, "echo bot: answered");
                    break;
                }
                Ok(Err(ClientError::Busy { .. })) => {
                    tokio::select! {
                        _ = &mut stop => break 'run,
                        () = tokio::time::sleep(BUSY_RETRY) => {}
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(%to, error = %e, "echo bot: cannot answer");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "echo bot stopped");
                    break 'run;
                }
            }
        }
    }
    if let Err(e) = driver.shutdown().await {
        tracing::warn!(error = %e, "echo bot: shutdown");
    }
    let _ = listener.await;
    tracing::info!("echo bot stopped");
}
