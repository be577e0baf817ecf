//! `kogge`: the Kogge command-line client, a thin program over the library.
//!
//! One data directory (`--dir`, or `KOGGE_DIR`, default `~/.kogge`) is one device of one
//! user. Everything secret in it is sealed under a key made from a passphrase
//! (`KOGGE_PASSPHRASE`, or asked on the terminal) or a key file (`--key-file`, or
//! `KOGGE_KEY_FILE`): see `kogge/vault.rs`. README.md ("Command-line client") shows a
//! session:
//!
//! ```text
//! kogge --dir alice init --address alice@one.example --provider "one.example 127.0.0.1:4433 <key>"
//! kogge --dir alice register
//! kogge --dir alice send bob@two.example "hello"
//! kogge --dir bob listen --count 1 --timeout 30
//! kogge --dir alice fingerprint bob@two.example
//! kogge --dir alice verify bob@two.example "<the 60 digits Bob reads out>"
//! kogge inspect envelope.bin
//! ```
//!
//! Linking a second device: `kogge --dir bob device invite` prints an invite; `kogge
//! --dir bob2 link request INVITE` makes new device keys and prints a certificate request;
//! `kogge --dir bob device approve REQUEST` signs the device into a new device list with
//! the identity key, publishes it and prints the approval; `kogge --dir bob2 link finish
//! APPROVAL` registers the new device. The device keys never leave the new directory and
//! the identity key never leaves the old one.

#[path = "kogge/groups.rs"]
mod groups;
#[path = "kogge/inspect.rs"]
mod inspect;
#[path = "kogge/net.rs"]
mod net;
#[path = "kogge/show.rs"]
mod show;
#[path = "kogge/state.rs"]
mod state;
#[path = "kogge/vault.rs"]
mod vault;

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use kogge::address::Address;
use kogge::client::ClientEvent;
use kogge::crypto::Secret;
use kogge::envelope::{Content, MessageId, Text};
use kogge::identity::{
    CertificateRequest, Device, DeviceCertificate, DeviceId, DeviceKeyPair, DeviceList,
    IdentityKey, IdentityKeyPair, ProviderKey, SafetyNumber,
};
use kogge::resolve::{PeerInfo, StaticDirectory};
use kogge::session::Account;
use kogge::transport::quic;
use prost::Message as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::time::Instant;
use zeroize::Zeroizing;

use net::Connection;
use state::{InboxItem, LinkFile, Profile};
use vault::{KeySource, Vault, VaultError};

/// Validity of a device certificate made here: from a day ago (clock skew) for five years.
const CERTIFICATE_DAYS: u64 = 5 * 365;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// How long `send` waits for a fresher device list of the recipient before sealing to the
/// one it holds (the recipient's provider may be down; the message is queued anyway).
const LIST_REFRESH_WAIT: Duration = Duration::from_secs(3);
/// How long to let best-effort traffic (delivery receipts) leave before disconnecting.
const LINGER: Duration = Duration::from_secs(2);
/// Prefixes of the texts exchanged while linking a device.
const INVITE_PREFIX: &str = "kogge-invite:";
const REQUEST_PREFIX: &str = "kogge-link-request:";
const APPROVAL_PREFIX: &str = "kogge-link-approval:";

#[derive(Debug, Parser)]
#[command(
    name = "kogge",
    version,
    about = "The Kogge command-line client: end-to-end-encrypted messages between providers",
    long_about = "The Kogge command-line client. A data directory is one device of one user; \
everything secret in it is encrypted under a passphrase (KOGGE_PASSPHRASE, or asked on the \
terminal) or a key file (--key-file). Logs go to stderr (RUST_LOG, default warn)."
)]
struct Cli {
    /// The data directory of this device [env: KOGGE_DIR; default: ~/.kogge].
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Protect the data directory with this key file (32 random bytes, created 0600 by
    /// `init` and `link request`) instead of a passphrase [env: KOGGE_KEY_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a new identity and its first device for ADDRESS (offline; then `register`).
    Init {
        /// The user's address, `user@provider-domain`.
        #[arg(long)]
        address: String,
        /// The provider's directory line, `domain endpoint key-hex`, as `kogge-provider
        /// init` prints it.
        #[arg(long, value_name = "LINE", conflicts_with = "directory")]
        provider: Option<String>,
        /// A directory file (`domain endpoint key-hex` per line) that lists the provider.
        #[arg(long, value_name = "FILE")]
        directory: Option<PathBuf>,
    },
    /// Connects to the provider, authenticates with the signed device list (registering
    /// the user or the device if new) and publishes prekeys.
    Register {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Sends a text message and waits until the provider has stored it for every
    /// recipient device.
    Send {
        /// The recipient, `user@provider-domain` (your own address reaches your other
        /// devices).
        to: String,
        /// The text; `-` reads it from standard input.
        text: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Prints messages (one-to-one and group), receipts, group changes and warnings:
    /// first those received and not shown yet, then live ones.
    Listen {
        /// Stop after this many messages (receipts do not count).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Stop after this many seconds (with --count: a failure if fewer arrived).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Send read receipts for the messages printed.
        #[arg(long)]
        read_receipts: bool,
    },
    /// Shows this user's identity fingerprint, or the safety number with a contact.
    Fingerprint {
        /// The contact (fetches their device list if not held yet).
        contact: Option<String>,
        /// Give up fetching after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Marks a contact verified if SAFETY_NUMBER (60 digits, spaces allowed) is the one
    /// both of you see; later messages to them are refused if their identity changes.
    Verify {
        /// The contact.
        contact: String,
        /// The safety number, as the contact reads it out or shows it.
        safety_number: String,
        /// Give up fetching after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Shows this device: address, device id, provider, fingerprint.
    Whoami,
    /// Managing this user's devices (on the device that holds the identity key).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Groups whose members may be at any provider; `kogge listen` shows their messages.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Setting up this directory as a further device of an existing user.
    #[command(subcommand)]
    Link(LinkCommand),
    /// Prints an envelope's header as readable text, without any key.
    Inspect {
        /// A file holding the envelope, binary or hex; `-` reads standard input.
        #[arg(value_name = "FILE", required_unless_present = "hex")]
        file: Option<PathBuf>,
        /// The envelope as hex.
        #[arg(long, value_name = "HEX", conflicts_with = "file")]
        hex: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Lists this user's devices (the signed device list held).
    List,
    /// Prints an invite for a new device (give it to `kogge link request`).
    Invite,
    /// Signs a new device into the device list and publishes it; prints the approval
    /// for `kogge link finish`.
    Approve {
        /// The request `kogge link request` printed.
        request: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Removes a device (a lost one, say) from the device list and publishes the list: the
    /// provider drops the device's mailbox and prekeys, and contacts stop sealing to it.
    Remove {
        /// The device id (as `kogge device list` shows it).
        device: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Creates a group of this user (its admin) and MEMBERs, ordered by this user's
    /// provider; prints the group id.
    Create {
        /// The title.
        #[arg(long)]
        title: String,
        /// The other members, `user@provider-domain`.
        #[arg(required = true)]
        members: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Sends a text message to every member device, sealed once.
    Send {
        /// The group id (as `kogge group list` shows it).
        group: String,
        /// The text.
        text: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Adds members (admins only).
    Add {
        /// The group id.
        group: String,
        /// The new members.
        #[arg(required = true)]
        members: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Removes members (admins only); they cannot read what follows.
    Remove {
        /// The group id.
        group: String,
        /// The members to remove.
        #[arg(required = true)]
        members: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Leaves the group.
    Leave {
        /// The group id.
        group: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Changes the title (admins only).
    Title {
        /// The group id.
        group: String,
        /// The new title.
        title: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Makes a member an admin, or (with --member) an admin a member again (admins only).
    Admin {
        /// The group id.
        group: String,
        /// The member.
        member: String,
        /// Make them a plain member instead.
        #[arg(long)]
        member_only: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Lists the groups this device holds, with their members.
    List,
}

#[derive(Debug, Subcommand)]
enum LinkCommand {
    /// Creates this data directory for a new device from an invite and prints the
    /// request to approve on the device holding the identity key.
    Request {
        /// The invite `kogge device invite` printed.
        invite: String,
    },
    /// Completes the new device with the approval and registers it.
    Finish {
        /// The approval `kogge device approve` printed.
        approval: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
}

/// Why the program stops with an error: a message for the user.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<VaultError> for Failure {
    fn from(e: VaultError) -> Self {
        Self(e.to_string())
    }
}

impl From<inspect::InspectError> for Failure {
    fn from(e: inspect::InspectError) -> Self {
        Self(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kogge: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, filtered by `RUST_LOG` (default `warn`: the output is for people
/// and scripts).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    let dir = data_dir(cli.dir)?;
    let key_file = cli
        .key_file
        .or_else(|| std::env::var_os("KOGGE_KEY_FILE").map(PathBuf::from));
    let key_file = key_file.as_deref();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))
    };
    match cli.command {
        Command::Init {
            address,
            provider,
            directory,
        } => init(&dir, key_file, &address, provider, directory),
        Command::Register { timeout } => runtime()?.block_on(register(&dir, key_file, timeout)),
        Command::Send { to, text, timeout } => {
            runtime()?.block_on(send(&dir, key_file, &to, text, timeout))
        }
        Command::Listen {
            count,
            timeout,
            read_receipts,
        } => runtime()?.block_on(listen(&dir, key_file, count, timeout, read_receipts)),
        Command::Fingerprint { contact, timeout } => {
            runtime()?.block_on(fingerprint(&dir, key_file, contact, timeout))
        }
        Command::Verify {
            contact,
            safety_number,
            timeout,
        } => runtime()?.block_on(verify(&dir, key_file, &contact, &safety_number, timeout)),
        Command::Whoami => whoami(&dir, key_file),
        Command::Device(DeviceCommand::List) => device_list(&dir, key_file),
        Command::Device(DeviceCommand::Invite) => invite(&dir, key_file),
        Command::Device(DeviceCommand::Approve { request, timeout }) => {
            runtime()?.block_on(approve(&dir, key_file, &request, timeout))
        }
        Command::Device(DeviceCommand::Remove { device, timeout }) => {
            runtime()?.block_on(remove_device(&dir, key_file, &device, timeout))
        }
        Command::Group(g) => group_command(&dir, key_file, g, runtime),
        Command::Link(LinkCommand::Request { invite }) => link_request(&dir, key_file, &invite),
        Command::Link(LinkCommand::Finish { approval, timeout }) => {
            runtime()?.block_on(link_finish(&dir, key_file, &approval, timeout))
        }
        Command::Inspect { file, hex } => inspect_cmd(file, hex),
    }
}

fn group_command(
    dir: &Path,
    key_file: Option<&Path>,
    command: GroupCommand,
    runtime: impl Fn() -> Result<tokio::runtime::Runtime, Failure>,
) -> Result<(), Failure> {
    use groups::Change;
    let addresses = |list: &[String]| -> Result<Vec<Address>, Failure> {
        list.iter().map(|a| parse_address(a)).collect()
    };
    let change = |group: String, what: Change, timeout: u64| -> Result<(), Failure> {
        runtime()?.block_on(groups::change(dir, key_file, &group, what, timeout))
    };
    match command {
        GroupCommand::Create {
            title,
            members,
            timeout,
        } => runtime()?.block_on(groups::create(dir, key_file, &title, &members, timeout)),
        GroupCommand::Send {
            group,
            text,
            timeout,
        } => runtime()?.block_on(groups::send(dir, key_file, &group, text, timeout)),
        GroupCommand::Add {
            group,
            members,
            timeout,
        } => change(group, Change::Add(addresses(&members)?), timeout),
        GroupCommand::Remove {
            group,
            members,
            timeout,
        } => change(group, Change::Remove(addresses(&members)?), timeout),
        GroupCommand::Leave { group, timeout } => change(group, Change::Leave, timeout),
        GroupCommand::Title {
            group,
            title,
            timeout,
        } => change(group, Change::Title(title), timeout),
        GroupCommand::Admin {
            group,
            member,
            member_only,
            timeout,
        } => {
            let role = if member_only {
                kogge::group::GroupRole::Member
            } else {
                kogge::group::GroupRole::Admin
            };
            change(group, Change::Role(parse_address(&member)?, role), timeout)
        }
        GroupCommand::List => groups::list(dir, key_file),
    }
}

// ---------------------------------------------------------------------------------
// Helpers

fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(d) = flag.or_else(|| std::env::var_os("KOGGE_DIR").map(PathBuf::from)) {
        return Ok(d);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kogge"))
        .ok_or_else(|| Failure::new("no data directory: give --dir or set KOGGE_DIR"))
}

/// A CSPRNG seeded from the operating system.
pub(crate) fn os_rng() -> Result<ChaCha20Rng, Failure> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice())
        .map_err(|e| Failure::new(format!("the OS random number generator failed: {e}")))?;
    Ok(ChaCha20Rng::from_seed(*seed))
}

fn now() -> kogge::UnixMillis {
    quic::now()
}

fn parse_address(s: &str) -> Result<Address, Failure> {
    Address::parse(s).map_err(|e| Failure::new(format!("invalid address {s:?}: {e}")))
}

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Opens the data directory and its state (the device must be set up).
fn open(dir: &Path, key_file: Option<&Path>) -> Result<(Vault, Account, Profile), Failure> {
    let vault = Vault::open(dir, &KeySource::from_env(key_file, false)?)?;
    match state::load_state(&vault)? {
        Some((account, profile)) => Ok((vault, account, profile)),
        None if state::load_link(&vault)?.is_some() => Err(Failure::new(format!(
            "{} is a device waiting for approval: finish it with `kogge link finish`",
            dir.display()
        ))),
        None => Err(Failure::new(format!(
            "{} holds no device (run `kogge init` or `kogge link request`)",
            dir.display()
        ))),
    }
}

/// Prints what arrived while a command ran for something else, and how to see it.
fn note_inbox(conn: &Connection) {
    let n = conn
        .profile()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .inbox
        .len();
    if n > 0 {
        eprintln!("kogge: {n} new item(s) received; `kogge listen` shows them");
    }
}

/// Ignores events while waiting for something else (they are in the inbox).
fn ignore(_: &ClientEvent) {}

/// Connects and waits until the provider accepted this device and stored its prekeys.
async fn connect_registered(
    vault: Arc<Vault>,
    account: Account,
    profile: Profile,
    timeout: u64,
) -> Result<Connection, Failure> {
    let mut conn = Connection::start(vault, account, profile).await?;
    let until = deadline(timeout);
    conn.wait_online(until, &mut ignore).await?;
    if !conn
        .wait_for(until, |c| c.prekeys_published(), &mut ignore)
        .await?
    {
        return Err(conn.unreachable("publishing prekeys"));
    }
    let newly = {
        let mut p = conn
            .profile()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !std::mem::replace(&mut p.registered, true)
    };
    if newly {
        // Write the flag now (the next step of the client would, too).
        conn.driver()
            .with_client(|_, _| ())
            .await
            .map_err(|e| Failure::new(format!("the client stopped: {e}")))?;
    }
    Ok(conn)
}

fn provider_from(
    address: &Address,
    line: Option<String>,
    directory: Option<PathBuf>,
) -> Result<PeerInfo, Failure> {
    let text = match (line, directory) {
        (Some(l), _) => l,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => {
            return Err(Failure::new(
                "give the provider: --provider \"domain endpoint key-hex\" or --directory FILE",
            ));
        }
    };
    let dir = StaticDirectory::parse(&text)
        .map_err(|e| Failure::new(format!("provider directory: {e}")))?;
    let domain = address.domain();
    dir.entries()
        .find(|e| e.domain == domain)
        .cloned()
        .ok_or_else(|| Failure::new(format!("no provider for {domain} in the directory given")))
}

fn fingerprint_text(key: &IdentityKey, address: &Address) -> String {
    show::grouped(&key.fingerprint(address).digits())
}

// ---------------------------------------------------------------------------------
// Commands

fn init(
    dir: &Path,
    key_file: Option<&Path>,
    address: &str,
    line: Option<String>,
    directory: Option<PathBuf>,
) -> Result<(), Failure> {
    let address = parse_address(address)?;
    let provider = provider_from(&address, line, directory)?;
    let mut rng = os_rng()?;
    let vault = Vault::create(dir, &KeySource::from_env(key_file, true)?, &mut rng)?;
    let now = now();
    let identity = IdentityKeyPair::generate(&mut rng);
    let device = Device::new(
        &identity,
        address.clone(),
        DeviceKeyPair::generate(&mut rng),
        now.saturating_sub(DAY_MS),
        now.saturating_add(CERTIFICATE_DAYS * DAY_MS),
    )
    .map_err(|e| Failure::new(format!("device certificate: {e}")))?;
    let list = DeviceList::sign(&identity, &address, 1, now, &[device.certificate().clone()])
        .map_err(|e| Failure::new(format!("device list: {e}")))?;
    let device_id = device.id();
    let mut account = Account::new(device, list, now, &mut rng)
        .map_err(|e| Failure::new(format!("account: {e}")))?;
    account.replenish_prekeys(now, &mut rng);
    state::save_identity(&vault, &identity, &mut rng)?;
    let profile = Profile {
        provider: provider.domain,
        endpoint: provider.endpoint,
        provider_key: provider.key,
        verified: Vec::new(),
        inbox: Vec::new(),
        registered: false,
    };
    profile.save(&vault, &account, &mut rng)?;
    println!("created {address}");
    println!("  device       {device_id}");
    println!(
        "  fingerprint  {}",
        fingerprint_text(&identity.public(), &address)
    );
    println!("  data         {}", dir.display());
    println!("next: kogge --dir {} register", dir.display());
    Ok(())
}

async fn register(dir: &Path, key_file: Option<&Path>, timeout: u64) -> Result<(), Failure> {
    let (vault, account, profile) = open(dir, key_file)?;
    let address = account.device().address().clone();
    let device = account.device().id();
    let conn = connect_registered(Arc::new(vault), account, profile, timeout).await?;
    note_inbox(&conn);
    conn.close().await?;
    println!("registered {address} device {device}");
    Ok(())
}

async fn send(
    dir: &Path,
    key_file: Option<&Path>,
    to: &str,
    text: String,
    timeout: u64,
) -> Result<(), Failure> {
    let to = parse_address(to)?;
    let text = if text == "-" {
        let mut s = String::new();
        io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::new(format!("cannot read the text: {e}")))?;
        s.trim_end_matches('\n').to_owned()
    } else {
        text
    };
    let (vault, account, profile) = open(dir, key_file)?;
    let holds_list = net::held_list(&account, &to);
    let me = account.device().address().clone();
    let until = deadline(timeout);
    let mut conn = Connection::start(Arc::new(vault), account, profile).await?;
    conn.wait_online(until, &mut ignore).await?;
    // Each run is a fresh client: look at the recipient's (and our own) current device
    // list first, so that a device added since the last run is not left out.
    if holds_list {
        net::refresh_list(&mut conn, &to, LIST_REFRESH_WAIT, &mut ignore).await?;
    }
    if to != me {
        net::refresh_list(&mut conn, &me, LIST_REFRESH_WAIT, &mut ignore).await?;
    }
    let content = Content::Text(Text {
        media_type: "text/plain".into(),
        body: text,
        reply_to: None,
    });
    let id = conn
        .driver()
        .send(to.clone(), content)
        .await
        .map_err(|e| Failure::new(format!("the client stopped: {e}")))?
        .map_err(|e| Failure::new(format!("cannot send to {to}: {e}")))?;
    let mut warnings = Vec::new();
    let outcome = loop {
        match conn.next(until).await? {
            Some(ClientEvent::DeliveredToProvider { message_id }) if message_id == id => {
                break Ok(());
            }
            Some(ClientEvent::Undeliverable {
                message_id,
                recipient,
                device,
                reason,
            }) if message_id == id => match device {
                Some(d) => warnings.push(format!("not to {recipient} device {d}: {reason}")),
                None => {
                    break Err(Failure::new(format!(
                        "undeliverable to {recipient}: {reason}"
                    )));
                }
            },
            Some(ClientEvent::IdentityChanged { address, .. }) if address == to => {
                warnings.push(format!(
                    "{to}'s identity key changed: compare the safety number again \
                     (kogge fingerprint {to})"
                ));
            }
            Some(_) => {}
            None => break Err(conn.unreachable("waiting for the provider to accept the message")),
        }
    };
    for w in &warnings {
        eprintln!("kogge: warning: {w}");
    }
    if outcome.is_ok() {
        // Let receipts for what arrived meanwhile leave (best effort).
        let linger = Instant::now() + LINGER;
        let _ = conn
            .wait_for(linger, |c| c.pending_messages() == 0, &mut ignore)
            .await;
        note_inbox(&conn);
    }
    let closed = conn.close().await;
    outcome?;
    closed?;
    println!("sent {id} to {to}: stored by the provider");
    Ok(())
}

async fn listen(
    dir: &Path,
    key_file: Option<&Path>,
    count: Option<usize>,
    timeout: Option<u64>,
    read_receipts: bool,
) -> Result<(), Failure> {
    let (vault, account, mut profile) = open(dir, key_file)?;
    let until = timeout.map(deadline);
    let mut shown = 0usize;
    let mut to_mark: Vec<(Address, MessageId)> = Vec::new();
    let out = io::stdout();
    let print = |item: &InboxItem, to_mark: &mut Vec<(Address, MessageId)>| {
        let mut o = out.lock();
        let _ = writeln!(o, "{}", show::item(item));
        let _ = o.flush();
        if item.kind == state::ItemKind::GroupMessage as i32 {
            true
        } else if item.kind == state::ItemKind::Message as i32 {
            if read_receipts
                && let (Ok(a), Some(id)) = (
                    Address::parse_canonical(&item.sender),
                    MessageId::from_slice(&item.message_id),
                )
            {
                to_mark.push((a, id));
            }
            true
        } else {
            false
        }
    };
    // First what arrived before (while other commands ran), oldest first, before the
    // connection adds anything; what is shown leaves the inbox.
    let mut rest = Vec::new();
    for item in std::mem::take(&mut profile.inbox) {
        if count.is_some_and(|n| shown >= n) {
            rest.push(item);
        } else if print(&item, &mut to_mark) {
            shown += 1;
        }
    }
    profile.inbox = rest;
    if count.is_some_and(|n| shown >= n) && to_mark.is_empty() {
        profile.save(&vault, &account, &mut os_rng()?)?;
        return Ok(());
    }
    let mut conn = Connection::start(Arc::new(vault), account, profile).await?;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let result = loop {
        if count.is_some_and(|n| shown >= n) {
            break Ok(());
        }
        if read_receipts && !to_mark.is_empty() {
            for (sender, id) in std::mem::take(&mut to_mark) {
                let _ = conn.driver().mark_read(sender, vec![id]).await;
            }
        }
        let event = tokio::select! {
            e = conn.next(until.unwrap_or(far)) => e,
            _ = &mut interrupted => break Ok(()),
        };
        match event {
            Err(e) => break Err(e),
            Ok(None) => {
                break match count {
                    Some(n) => Err(Failure::new(format!(
                        "timed out: {shown} of {n} messages arrived"
                    ))),
                    None => Ok(()),
                };
            }
            Ok(Some(e)) => {
                let Some(item) = net::inbox_item(&e, now().0) else {
                    match e {
                        ClientEvent::Online => tracing::info!("online"),
                        ClientEvent::Offline => tracing::info!("offline; reconnecting"),
                        other => tracing::debug!(event = ?other, "event"),
                    }
                    continue;
                };
                // The persistence hook put it into the inbox before it came here; it is
                // shown now, so it leaves the inbox.
                {
                    let mut p = conn
                        .profile()
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(i) = p.inbox.iter().position(|x| net::same_item(x, &item)) {
                        let stored = p.inbox.remove(i);
                        drop(p);
                        if print(&stored, &mut to_mark) {
                            shown += 1;
                        }
                        continue;
                    }
                }
                if print(&item, &mut to_mark) {
                    shown += 1;
                }
            }
        }
    };
    if read_receipts && !to_mark.is_empty() {
        for (sender, id) in std::mem::take(&mut to_mark) {
            let _ = conn.driver().mark_read(sender, vec![id]).await;
        }
    }
    if read_receipts {
        let linger = Instant::now() + LINGER;
        let _ = conn
            .wait_for(linger, |c| c.pending_messages() == 0, &mut ignore)
            .await;
    }
    let closed = conn.close().await;
    result?;
    closed
}

/// Makes sure a device list for `contact` is held, fetching it if needed; returns the
/// account's view of the contact's identity key.
async fn contact_key(
    dir: &Path,
    key_file: Option<&Path>,
    contact: &Address,
    timeout: u64,
) -> Result<(Vault, Account, Profile, IdentityKey), Failure> {
    let (vault, account, profile) = open(dir, key_file)?;
    if let Some(list) = account.contacts().get(contact) {
        let key = *list.identity_key();
        return Ok((vault, account, profile, key));
    }
    if contact == account.device().address() {
        let key = *account.own_device_list().identity_key();
        return Ok((vault, account, profile, key));
    }
    let vault = Arc::new(vault);
    let mut conn = Connection::start(Arc::clone(&vault), account, profile).await?;
    let until = deadline(timeout);
    conn.wait_online(until, &mut ignore).await?;
    let held = net::refresh_list(
        &mut conn,
        contact,
        until.saturating_duration_since(Instant::now()),
        &mut ignore,
    )
    .await?;
    conn.close().await?;
    if !held {
        return Err(Failure::new(format!(
            "no device list for {contact}: no such user, or their provider is unreachable"
        )));
    }
    let vault = Arc::try_unwrap(vault)
        .map_err(|_| Failure::new("internal error: the data directory is still in use"))?;
    let (account, profile) =
        state::load_state(&vault)?.ok_or_else(|| Failure::new("the state disappeared"))?;
    let key = account
        .contacts()
        .get(contact)
        .map(|l| *l.identity_key())
        .ok_or_else(|| Failure::new(format!("no device list for {contact}")))?;
    Ok((vault, account, profile, key))
}

async fn fingerprint(
    dir: &Path,
    key_file: Option<&Path>,
    contact: Option<String>,
    timeout: u64,
) -> Result<(), Failure> {
    let Some(contact) = contact else {
        let (_, account, _) = open(dir, key_file)?;
        let me = account.device().address();
        let key = account.own_device_list().identity_key();
        println!("{me}");
        println!("  identity fingerprint  {}", fingerprint_text(key, me));
        return Ok(());
    };
    let contact = parse_address(&contact)?;
    let (_, account, profile, key) = contact_key(dir, key_file, &contact, timeout).await?;
    let me = account.device().address();
    let own = account.own_device_list().identity_key();
    let number = SafetyNumber::new(own, me, &key, &contact);
    let status = match profile.verified_key(&contact) {
        Some(k) if *k == key => "verified",
        Some(_) => "CHANGED since you verified it: do not trust it before you compare again",
        None => "not verified",
    };
    println!("safety number of {me} and {contact}:");
    println!("  {}", number.grouped());
    println!(
        "  {contact}'s fingerprint  {}",
        fingerprint_text(&key, &contact)
    );
    println!("  status  {status}");
    Ok(())
}

async fn verify(
    dir: &Path,
    key_file: Option<&Path>,
    contact: &str,
    safety_number: &str,
    timeout: u64,
) -> Result<(), Failure> {
    let contact = parse_address(contact)?;
    let given: String = safety_number
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if given.len() != 60 || !given.chars().all(|c| c.is_ascii_digit()) {
        return Err(Failure::new("a safety number is 60 digits"));
    }
    let (vault, account, mut profile, key) = contact_key(dir, key_file, &contact, timeout).await?;
    let me = account.device().address();
    let number = SafetyNumber::new(account.own_device_list().identity_key(), me, &key, &contact);
    if number.digits() != given {
        return Err(Failure::new(format!(
            "the safety number does not match: this is not the identity key you compared, \
             or not the same contact. Nothing was changed. Ours is:\n  {}",
            number.grouped()
        )));
    }
    profile.set_verified(&contact, key);
    profile.save(&vault, &account, &mut os_rng()?)?;
    println!(
        "verified {contact} (fingerprint {})",
        fingerprint_text(&key, &contact)
    );
    Ok(())
}

fn whoami(dir: &Path, key_file: Option<&Path>) -> Result<(), Failure> {
    let (vault, account, profile) = open(dir, key_file)?;
    let me = account.device().address();
    let holds_identity = state::load_identity(&vault)?.is_some();
    println!("{me}");
    println!("  device          {}", account.device().id());
    println!(
        "  provider        {} at {}",
        profile.provider, profile.endpoint
    );
    println!("  provider key    {}", profile.provider_key);
    println!(
        "  fingerprint     {}",
        fingerprint_text(account.own_device_list().identity_key(), me)
    );
    println!(
        "  registered      {}",
        if profile.registered { "yes" } else { "not yet" }
    );
    println!(
        "  identity key    {}",
        if holds_identity {
            "held here (this device can add devices)"
        } else {
            "not held here"
        }
    );
    println!(
        "  devices         {}",
        account.own_device_list().devices().len()
    );
    println!("  contacts        {}", account.contacts().len());
    println!("  verified        {}", profile.verified.len());
    println!("  unread          {}", profile.inbox.len());
    Ok(())
}

fn device_list(dir: &Path, key_file: Option<&Path>) -> Result<(), Failure> {
    let (_, account, _) = open(dir, key_file)?;
    let list = account.own_device_list();
    println!(
        "{} devices of {} (device list serial {}):",
        list.devices().len(),
        list.address(),
        list.serial()
    );
    for cert in list.devices() {
        let this = if cert.device_id() == account.device().id() {
            "  (this device)"
        } else {
            ""
        };
        println!(
            "  {}  valid until {}{this}",
            cert.device_id(),
            show::time(cert.not_after().0)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Linking a device

/// What `device invite` prints: all public.
#[derive(Clone, PartialEq, prost::Message)]
struct Invite {
    #[prost(string, tag = "1")]
    address: String,
    #[prost(string, tag = "2")]
    endpoint: String,
    #[prost(bytes = "vec", tag = "3")]
    provider_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    identity_key: Vec<u8>,
}

fn decode_code(text: &str, prefix: &str, what: &str) -> Result<Vec<u8>, Failure> {
    let text = text.trim();
    let hex = text
        .strip_prefix(prefix)
        .ok_or_else(|| Failure::new(format!("not {what}: it must start with {prefix}")))?;
    vault::from_hex(hex).ok_or_else(|| Failure::new(format!("{what} is damaged (bad hex)")))
}

fn invite(dir: &Path, key_file: Option<&Path>) -> Result<(), Failure> {
    let (vault, account, profile) = open(dir, key_file)?;
    if state::load_identity(&vault)?.is_none() {
        return Err(Failure::new(
            "this device does not hold the identity key: invite from the device that created \
             the identity",
        ));
    }
    let me = account.device().address();
    let key = account.own_device_list().identity_key();
    let code = Invite {
        address: me.as_str().to_owned(),
        endpoint: profile.endpoint.clone(),
        provider_key: profile.provider_key.to_bytes().to_vec(),
        identity_key: key.to_bytes().to_vec(),
    }
    .encode_to_vec();
    println!("{INVITE_PREFIX}{}", vault::to_hex(&code).as_str());
    eprintln!(
        "On the new device: kogge --dir NEW link request <the line above>. It will show the \
         fingerprint {} to compare.",
        fingerprint_text(key, me)
    );
    Ok(())
}

fn link_request(dir: &Path, key_file: Option<&Path>, code: &str) -> Result<(), Failure> {
    let bytes = decode_code(code, INVITE_PREFIX, "an invite")?;
    let inv = Invite::decode(bytes.as_slice())
        .map_err(|e| Failure::new(format!("the invite is damaged: {e}")))?;
    let address = Address::parse_canonical(&inv.address)
        .map_err(|e| Failure::new(format!("the invite's address: {e}")))?;
    let identity = IdentityKey::from_bytes(&inv.identity_key)
        .map_err(|_| Failure::new("the invite's identity key is invalid"))?;
    ProviderKey::from_bytes(&inv.provider_key)
        .map_err(|_| Failure::new("the invite's provider key is invalid"))?;
    let mut rng = os_rng()?;
    let vault = Vault::create(dir, &KeySource::from_env(key_file, true)?, &mut rng)?;
    let keys = DeviceKeyPair::generate(&mut rng);
    let now = now();
    let request = CertificateRequest::new(
        &identity,
        &keys,
        &address,
        now.saturating_sub(DAY_MS),
        now.saturating_add(CERTIFICATE_DAYS * DAY_MS),
    )
    .map_err(|e| Failure::new(format!("certificate request: {e}")))?;
    let (signing, agreement) = keys.secret_bytes();
    let link = LinkFile {
        format: 1,
        address: address.as_str().to_owned(),
        endpoint: inv.endpoint.clone(),
        provider_key: inv.provider_key.clone(),
        identity_key: inv.identity_key.clone(),
        signing_seed: signing.expose().to_vec(),
        agreement_secret: agreement.expose().to_vec(),
        request: request.encoded().to_vec(),
    };
    state::save_link(&vault, &link, &mut rng)?;
    println!(
        "{REQUEST_PREFIX}{}",
        vault::to_hex(request.encoded()).as_str()
    );
    eprintln!(
        "New device {} for {address}. Check that the identity fingerprint is {} on the \
         device that approves: kogge --dir OLD device approve <the line above>",
        request.device_id(),
        fingerprint_text(&identity, &address)
    );
    Ok(())
}

/// Changes this user's device list on the device that holds the identity key: fetches
/// the newest list the provider holds (so the new serial is above every earlier one), lets
/// `edit` choose the devices, signs the new list, stores it, and publishes it by
/// authenticating with it (the provider stores it before it says Welcome). Returns the new
/// list, and the error if publishing failed (the list is then published on the next
/// connection).
async fn change_devices<F>(
    dir: &Path,
    key_file: Option<&Path>,
    timeout: u64,
    edit: F,
) -> Result<(DeviceList, Option<Failure>), Failure>
where
    F: FnOnce(&DeviceList, &IdentityKeyPair, DeviceId) -> Result<Vec<DeviceCertificate>, Failure>,
{
    let (vault, account, profile) = open(dir, key_file)?;
    let identity = state::load_identity(&vault)?.ok_or_else(|| {
        Failure::new(
            "this device does not hold the identity key: change the device list on the \
             device that created the identity",
        )
    })?;
    let me = account.device().address().clone();
    let vault = Arc::new(vault);
    let until = deadline(timeout);
    let mut conn = Connection::start(Arc::clone(&vault), account, profile).await?;
    conn.wait_online(until, &mut ignore).await?;
    net::refresh_list(
        &mut conn,
        &me,
        until.saturating_duration_since(Instant::now()),
        &mut ignore,
    )
    .await?;
    conn.close().await?;
    let vault = Arc::try_unwrap(vault)
        .map_err(|_| Failure::new("internal error: the data directory is still in use"))?;
    let (mut account, profile) =
        state::load_state(&vault)?.ok_or_else(|| Failure::new("the state disappeared"))?;
    let current = account.own_device_list().clone();
    if current.identity_key() != &identity.public() {
        return Err(Failure::new(
            "the provider holds a device list under another identity key than this device's",
        ));
    }
    let devices = edit(&current, &identity, account.device().id())?;
    let list = DeviceList::sign(&identity, &me, current.serial() + 1, now(), &devices)
        .map_err(|e| Failure::new(format!("cannot sign the new device list: {e}")))?;
    account
        .update_device_list(list.clone())
        .map_err(|e| Failure::new(format!("the new device list: {e}")))?;
    profile.save(&vault, &account, &mut os_rng()?)?;
    let vault = Arc::new(vault);
    let published = async {
        let mut conn = Connection::start(vault, account, profile).await?;
        conn.wait_online(until, &mut ignore).await?;
        conn.close().await
    }
    .await;
    Ok((list, published.err()))
}

async fn approve(
    dir: &Path,
    key_file: Option<&Path>,
    code: &str,
    timeout: u64,
) -> Result<(), Failure> {
    let bytes = decode_code(code, REQUEST_PREFIX, "a link request")?;
    let request = CertificateRequest::decode(Bytes::from(bytes))
        .map_err(|e| Failure::new(format!("the link request is invalid ({}): {e}", e.code())))?;
    let new_device = request.device_id();
    let (list, unpublished) = change_devices(dir, key_file, timeout, |current, identity, _| {
        if request.address() != current.address() || request.identity_key() != &identity.public() {
            return Err(Failure::new(format!(
                "the request is for {} under another identity key, not for {} with this \
                 identity",
                request.address(),
                current.address()
            )));
        }
        if current.contains(new_device) {
            return Err(Failure::new(format!(
                "device {new_device} is already on the list"
            )));
        }
        let certificate = request
            .approve(identity)
            .map_err(|e| Failure::new(format!("cannot certify the device: {e}")))?;
        let mut devices = current.devices().to_vec();
        devices.push(certificate);
        Ok(devices)
    })
    .await?;
    if let Some(e) = unpublished {
        eprintln!(
            "kogge: warning: the new device list is not published yet ({e}); the new device \
             publishes it when it registers, and this device the next time it connects"
        );
    }
    println!(
        "{APPROVAL_PREFIX}{}",
        vault::to_hex(list.encoded()).as_str()
    );
    eprintln!(
        "Device {new_device} added to {} (device list serial {}). On the new device: kogge \
         --dir NEW link finish <the line above>",
        list.address(),
        list.serial()
    );
    Ok(())
}

async fn remove_device(
    dir: &Path,
    key_file: Option<&Path>,
    device: &str,
    timeout: u64,
) -> Result<(), Failure> {
    let (list, unpublished) = change_devices(dir, key_file, timeout, |current, _, this| {
        if this.to_string() == device.to_ascii_lowercase() {
            return Err(Failure::new(
                "this is the device that holds the identity key; it cannot remove itself",
            ));
        }
        let keep: Vec<DeviceCertificate> = current
            .devices()
            .iter()
            .filter(|c| c.device_id().to_string() != device.to_ascii_lowercase())
            .cloned()
            .collect();
        if keep.len() == current.devices().len() {
            return Err(Failure::new(format!("device {device} is not on the list")));
        }
        Ok(keep)
    })
    .await?;
    if let Some(e) = unpublished {
        return Err(Failure::new(format!(
            "device {device} is removed from the list held here (serial {}), but the provider \
             does not know yet: {e}. It is published the next time this device connects \
             (kogge register).",
            list.serial()
        )));
    }
    println!(
        "removed device {device} from {} (device list serial {}): it can no longer receive \
         or send as {}",
        list.address(),
        list.serial(),
        list.address()
    );
    Ok(())
}

async fn link_finish(
    dir: &Path,
    key_file: Option<&Path>,
    code: &str,
    timeout: u64,
) -> Result<(), Failure> {
    let bytes = decode_code(code, APPROVAL_PREFIX, "a link approval")?;
    let vault = Vault::open(dir, &KeySource::from_env(key_file, false)?)?;
    if state::load_state(&vault)?.is_some() {
        return Err(Failure::new(format!("{} is set up already", dir.display())));
    }
    let link = state::load_link(&vault)?.ok_or_else(|| {
        Failure::new(format!(
            "{} has no pending link (run `kogge link request` first)",
            dir.display()
        ))
    })?;
    let address = Address::parse_canonical(&link.address)
        .map_err(|e| Failure::new(format!("the pending link's address: {e}")))?;
    let list = DeviceList::decode_for(Bytes::from(bytes), &address)
        .map_err(|e| Failure::new(format!("the approval is invalid ({}): {e}", e.code())))?;
    if list.identity_key().to_bytes().as_slice() != link.identity_key.as_slice() {
        return Err(Failure::new(
            "the approval is signed by another identity key than the invite named",
        ));
    }
    let to_secret = |b: &[u8], what: &str| -> Result<Secret<32>, Failure> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| Failure::new(format!("the pending link's {what} is damaged")))?;
        let a = Zeroizing::new(a);
        Ok(Secret::new(*a))
    };
    let keys = DeviceKeyPair::from_secret_bytes(
        &to_secret(&link.signing_seed, "signing key")?,
        &to_secret(&link.agreement_secret, "agreement key")?,
    );
    let certificate = list
        .get(keys.id())
        .cloned()
        .ok_or_else(|| Failure::new("the approval does not list this device"))?;
    let device = Device::from_parts(keys, certificate)
        .map_err(|e| Failure::new(format!("the approval's certificate: {e}")))?;
    let provider_key = ProviderKey::from_bytes(&link.provider_key)
        .map_err(|_| Failure::new("the pending link's provider key is damaged"))?;
    let mut rng = os_rng()?;
    let now = now();
    let device_id = device.id();
    let mut account = Account::new(device, list, now, &mut rng)
        .map_err(|e| Failure::new(format!("account: {e}")))?;
    account.replenish_prekeys(now, &mut rng);
    let profile = Profile {
        provider: address.domain(),
        endpoint: link.endpoint.clone(),
        provider_key,
        verified: Vec::new(),
        inbox: Vec::new(),
        registered: false,
    };
    profile.save(&vault, &account, &mut rng)?;
    vault.remove(state::LINK_FILE)?;
    let conn = connect_registered(Arc::new(vault), account, profile, timeout).await?;
    conn.close().await?;
    println!("linked and registered {address} device {device_id}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Inspect

fn inspect_cmd(file: Option<PathBuf>, hex: Option<String>) -> Result<(), Failure> {
    let raw = match (hex, file) {
        (Some(h), _) => {
            let compact: String = h.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = vault::from_hex(&compact).ok_or(inspect::InspectError::Hex)?;
            print!("{}", inspect::describe(bytes)?);
            return Ok(());
        }
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut b = Vec::new();
            io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| Failure::new(format!("cannot read standard input: {e}")))?;
            b
        }
        (None, Some(p)) => std::fs::read(&p)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", p.display())))?,
        (None, None) => return Err(Failure::new("give a FILE or --hex")),
    };
    let bytes = inspect::input_bytes(raw)?;
    print!("{}", inspect::describe(bytes)?);
    Ok(())
}
