//! `kogge-provider`: the reference Kogge provider, a thin program over the library.
//!
//! It serves one provider domain over QUIC ([`ProviderServer`]) with durable storage in a
//! redb file ([`RedbStore`]) or an append-only log file ([`LogStore`]), reads its peers from a static directory file (SPEC.md
//! 16.11), logs through `tracing` (`RUST_LOG`, default `info`) and stops gracefully on
//! SIGINT or SIGTERM. README.md ("Interop testing") shows how to run one.
//!
//! ```text
//! kogge-provider init --domain one.example --listen 127.0.0.1:4433 --dir one
//! kogge-provider run --config one/kogge-provider.toml
//! kogge-provider key --config one/kogge-provider.toml
//! ```
//!
//! The configuration file (TOML; relative paths are relative to the file's folder):
//!
//! ```toml
//! domain = "one.example"            # the provider domain served
//! listen = "127.0.0.1:4433"         # UDP socket address
//! endpoint = "one.example:4433"     # optional: what peers dial (default: `listen`)
//! key_file = "provider.key"         # Ed25519 provider key seed; created on first use (0600)
//! data_dir = "data"                 # holds the store (and the echo bot's state)
//! directory = "directory.txt"       # peer providers: `domain endpoint key-hex` per line
//! open_registration = false         # anyone may register a user
//!
//! [limits]                          # optional, each key optional (SPEC.md 16.10)
//! max_mailbox_depth = 10000
//!
//! [transport]                       # optional, each key optional (SPEC.md 17.4)
//! max_connections_per_host = 256
//!
//! [storage]                         # optional (SPEC.md 16.12)
//! engine = "log"                    # "log" (provider.klog) or "redb" (provider.redb); default:
//!                                   # redb if data_dir holds provider.redb, else log
//!
//! [interop]                         # optional
//! echo = true                       # open registration and the echo bot echo@<domain>
//! ```

#[path = "kogge-provider/alloc.rs"]
mod alloc;
#[path = "kogge-provider/echo.rs"]
mod echo;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kogge::address::Domain;
use kogge::crypto::Secret;
use kogge::identity::{ProviderKey, ProviderKeyPair};
use kogge::provider::{ProviderConfig, ProviderLimits};
use kogge::resolve::StaticDirectory;
use kogge::store::{Contents, LogStore, RedbStore, Store, StoreError, StoreOp};
use kogge::transport::quic::{ProviderServer, QuicConfig};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// The file `init` writes the configuration to, inside `--dir`.
const CONFIG_FILE: &str = "kogge-provider.toml";
/// The provider's store with the redb engine, inside `data_dir`.
const DATABASE_FILE: &str = "provider.redb";
/// The provider's store with the log engine, inside `data_dir`.
const LOG_FILE: &str = "provider.klog";
/// How often the provider's counters are logged (at `debug`) and its liveness checked.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "kogge-provider",
    version,
    about = "The reference Kogge provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the provider described by a configuration file until SIGINT or SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Writes a configuration, a provider key and an empty directory file into DIR and
    /// prints this provider's directory line (for other providers' directory files).
    Init {
        /// The provider domain to serve.
        #[arg(long, value_name = "D")]
        domain: String,
        /// The UDP socket address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// The folder to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// What other providers dial (`host:port`), if not the listen address.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// Let anyone register a user.
        #[arg(long)]
        open_registration: bool,
        /// Interop mode: open registration and the echo bot `echo@<domain>`.
        #[arg(long)]
        echo: bool,
    },
    /// Prints this provider's directory line (`domain endpoint key-hex`), creating the
    /// key file if there is none yet.
    Key {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Why the program stops with an error: a message for the operator.
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An I/O failure on `path` while doing `what`.
    fn io(what: &str, path: &Path, e: &io::Error) -> Self {
        Self(format!("cannot {what} {}: {e}", path.display()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Init {
            domain,
            listen,
            dir,
            endpoint,
            open_registration,
            echo,
        } => init(&InitArgs {
            domain,
            listen,
            dir,
            endpoint,
            open_registration,
            echo,
        }),
        Command::Key { config } => key(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kogge-provider: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

// ---------------------------------------------------------------------------------
// Configuration

/// The configuration file as written. Unknown keys are errors (a typo must not be
/// silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(deserialize_with = "domain")]
    domain: Domain,
    listen: SocketAddr,
    #[serde(default, deserialize_with = "endpoint")]
    endpoint: Option<String>,
    key_file: PathBuf,
    data_dir: PathBuf,
    directory: PathBuf,
    #[serde(default)]
    open_registration: bool,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    transport: TransportFile,
    #[serde(default)]
    storage: StorageFile,
    #[serde(default)]
    interop: InteropFile,
}

/// `[storage]`: which store engine keeps the provider's state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    #[serde(default)]
    engine: Option<Engine>,
}

/// A store engine (SPEC.md 16.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Engine {
    /// [`RedbStore`]: a B-tree database, `provider.redb`.
    Redb,
    /// [`LogStore`]: an append-only log of commit batches, `provider.klog`. The default
    /// for new providers: in `benches/relay.rs` it halves the store's CPU per message and
    /// takes 40 % of redb's disk space per queued message (README.md, "Relay benchmarks").
    Log,
}

impl Engine {
    /// The engine for a provider whose configuration says `configured`: that one, or if
    /// it names none, redb when `data_dir` already holds a redb store (providers set up
    /// before the log engine was the default), else the log.
    fn choose(configured: Option<Engine>, data_dir: &Path) -> Engine {
        configured.unwrap_or_else(|| {
            let redb = data_dir.join(Engine::Redb.file());
            if fs::metadata(redb).is_ok_and(|m| m.len() > 0) {
                Engine::Redb
            } else {
                Engine::Log
            }
        })
    }

    /// The engine's file in the data folder.
    const fn file(self) -> &'static str {
        match self {
            Engine::Redb => DATABASE_FILE,
            Engine::Log => LOG_FILE,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Log => "log",
        }
    }

    /// Opens the store in `data_dir`, refusing if the data folder holds the other
    /// engine's file: switching engines would start the provider empty.
    fn open(self, data_dir: &Path) -> Result<AnyStore, Failure> {
        for other in [Engine::Redb, Engine::Log] {
            let theirs = data_dir.join(other.file());
            if other != self && fs::metadata(&theirs).is_ok_and(|m| m.len() > 0) {
                return Err(Failure::new(format!(
                    "{} holds a {} store, but the configuration selects engine = \"{}\", which \
                     would start empty; set [storage] engine = \"{}\" or move the file away",
                    theirs.display(),
                    other.name(),
                    self.name(),
                    other.name()
                )));
            }
        }
        let path = data_dir.join(self.file());
        match self {
            Engine::Redb => RedbStore::open(&path)
                .map(AnyStore::Redb)
                .map_err(|e| Failure::new(e.to_string())),
            Engine::Log => LogStore::open(&path)
                .map(AnyStore::Log)
                .map_err(|e| Failure::new(e.to_string())),
        }
    }
}

/// The store of whichever engine the configuration selects.
#[derive(Debug)]
enum AnyStore {
    Redb(RedbStore),
    Log(LogStore),
}

impl Store for AnyStore {
    fn load(&mut self) -> Result<Contents, StoreError> {
        match self {
            AnyStore::Redb(s) => s.load(),
            AnyStore::Log(s) => s.load(),
        }
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        match self {
            AnyStore::Redb(s) => s.commit(ops),
            AnyStore::Log(s) => s.commit(ops),
        }
    }

    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        match self {
            AnyStore::Redb(s) => s.commit_owned(ops),
            AnyStore::Log(s) => s.commit_owned(ops),
        }
    }
}

/// `[transport]`: overrides of the QUIC endpoint's connection limits (SPEC.md 17.4), each
/// optional and greater than 0.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportFile {
    #[serde(default, deserialize_with = "positive")]
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    max_connections_per_host: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    max_handshakes: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    udp_buffer_bytes: Option<usize>,
}

impl TransportFile {
    fn quic(&self) -> QuicConfig {
        let mut q = QuicConfig::default();
        if let Some(v) = self.max_connections {
            q.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_host {
            q.max_connections_per_host = v;
        }
        if let Some(v) = self.max_handshakes {
            q.max_handshakes = v;
        }
        if let Some(v) = self.udp_buffer_bytes {
            q.udp_buffer_bytes = v;
        }
        q
    }
}

/// `[limits]`: overrides of [`ProviderLimits`], each optional and greater than 0.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default, deserialize_with = "positive")]
    max_mailbox_depth: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    max_remote_queue_depth: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    client_burst: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    client_rate: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    provider_burst: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    provider_rate: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    fetch_burst: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    fetches_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    one_time_burst: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    one_time_per_hour: Option<u32>,
    #[serde(default, deserialize_with = "positive")]
    relay_expiry_ms: Option<u64>,
}

/// `[interop]`: see README.md, "Interop testing".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteropFile {
    #[serde(default)]
    echo: bool,
}

fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<Domain, D::Error> {
    let s = String::deserialize(d)?;
    Domain::parse_canonical(&s)
        .map_err(|e| D::Error::custom(format!("invalid provider domain {s:?}: {e}")))
}

/// Whether `s` can be an endpoint in a directory line: `host:port`, no white space.
fn valid_endpoint(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok() && !s.contains(char::is_whitespace)
    })
}

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !valid_endpoint(&s) {
        return Err(D::Error::custom(format!(
            "invalid endpoint {s:?}: expected host:port"
        )));
    }
    Ok(Some(s))
}

fn positive<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialEq + From<u8>,
{
    let v = T::deserialize(d)?;
    if v == T::from(0) {
        return Err(D::Error::custom("must be greater than 0"));
    }
    Ok(Some(v))
}

impl LimitsFile {
    fn apply(&self, limits: &mut ProviderLimits) {
        let Self {
            max_mailbox_depth,
            max_remote_queue_depth,
            client_burst,
            client_rate,
            provider_burst,
            provider_rate,
            fetch_burst,
            fetches_per_minute,
            one_time_burst,
            one_time_per_hour,
            relay_expiry_ms,
        } = *self;
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        set(&mut limits.max_mailbox_depth, max_mailbox_depth);
        set(&mut limits.max_remote_queue_depth, max_remote_queue_depth);
        set(&mut limits.client_burst, client_burst);
        set(&mut limits.client_rate, client_rate);
        set(&mut limits.provider_burst, provider_burst);
        set(&mut limits.provider_rate, provider_rate);
        set(&mut limits.fetch_burst, fetch_burst);
        set(&mut limits.fetches_per_minute, fetches_per_minute);
        set(&mut limits.one_time_burst, one_time_burst);
        set(&mut limits.one_time_per_hour, one_time_per_hour);
        set(&mut limits.relay_expiry_ms, relay_expiry_ms);
    }
}

/// A configuration read from a file, paths resolved against the file's folder.
#[derive(Debug)]
struct Config {
    file: PathBuf,
    domain: Domain,
    listen: SocketAddr,
    endpoint: String,
    key_file: PathBuf,
    data_dir: PathBuf,
    directory: PathBuf,
    open_registration: bool,
    limits: ProviderLimits,
    quic: QuicConfig,
    /// As configured; [`Engine::choose`] decides when there is none.
    engine: Option<Engine>,
    echo: bool,
}

impl Config {
    fn load(path: &Path) -> Result<Self, Failure> {
        let text = fs::read_to_string(path).map_err(|e| Failure::io("read config", path, &e))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, Failure> {
        let raw: ConfigFile = toml::from_str(text)
            .map_err(|e| Failure::new(format!("config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut limits = ProviderLimits::default();
        raw.limits.apply(&mut limits);
        let quic = raw.transport.quic();
        Ok(Self {
            quic,
            file: path.to_path_buf(),
            endpoint: raw.endpoint.unwrap_or_else(|| raw.listen.to_string()),
            domain: raw.domain,
            listen: raw.listen,
            key_file: base.join(raw.key_file),
            data_dir: base.join(raw.data_dir),
            directory: base.join(raw.directory),
            open_registration: raw.open_registration,
            limits,
            engine: raw.storage.engine,
            echo: raw.interop.echo,
        })
    }

    /// The line other providers put in their directory files.
    fn directory_line(&self, key: &ProviderKey) -> String {
        format!("{} {} {key}", self.domain, self.endpoint)
    }

    fn warn_unreachable_endpoint(&self) {
        if self.endpoint == self.listen.to_string() && self.listen.ip().is_unspecified() {
            tracing::warn!(
                listen = %self.listen,
                "the endpoint in the directory line is an unspecified address; set `endpoint` \
                 in the configuration to what other providers can dial"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Files and secrets

/// 32 bytes from the operating system's random number generator.
#[allow(clippy::disallowed_methods)]
fn os_random() -> Result<Secret<32>, Failure> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice())
        .map_err(|e| Failure::new(format!("the OS random number generator failed: {e}")))?;
    Ok(Secret::new(*seed))
}

/// A CSPRNG seeded from the operating system.
fn os_rng() -> Result<ChaCha20Rng, Failure> {
    Ok(ChaCha20Rng::from_seed(*os_random()?.expose()))
}

fn to_hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            s.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
        }
    }
    s
}

fn from_hex(text: &str) -> Option<Secret<32>> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(Secret::new(*out))
}

/// Creates `path` with owner-only permissions (0600) holding `bytes`, durably: written to
/// a temporary file, flushed, renamed into place, and the folder flushed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(|e| Failure::io("create", &tmp, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::io("write", &tmp, &e))?;
    fs::rename(&tmp, path).map_err(|e| Failure::io("rename into place", path, &e))?;
    sync_dir(dir);
    Ok(())
}

/// Flushes a folder's entries (a new or renamed file in it) to disk, where that exists.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot flush folder");
    }
}

/// Warns if a secret file can be read by anyone but its owner.
fn check_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "secret file is accessible to others; `chmod 600` it"
            );
        }
    }
}

/// Creates the folder (and its parents) with owner-only permissions where new.
fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Failure::io("create folder", dir, &e))
}

/// Reads a 32-byte secret stored as hex in `path`, or creates one from OS randomness
/// (0600) if the file does not exist. `what` names it in messages.
fn load_or_create_secret(path: &Path, what: &str) -> Result<Secret<32>, Failure> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            check_private(path);
            from_hex(&text).ok_or_else(|| {
                Failure::new(format!(
                    "{what} file {} does not hold 64 hex digits",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            let secret = os_random()?;
            let mut text = to_hex(secret.expose());
            text.push('\n');
            write_private(path, text.as_bytes())?;
            tracing::info!(file = %path.display(), "created a new {what}");
            Ok(secret)
        }
        Err(e) => Err(Failure::io(&format!("read {what} file"), path, &e)),
    }
}

fn load_provider_key(config: &Config) -> Result<ProviderKeyPair, Failure> {
    let seed = load_or_create_secret(&config.key_file, "provider key")?;
    Ok(ProviderKeyPair::from_secret_bytes(&seed))
}

fn load_directory(config: &Config) -> Result<StaticDirectory, Failure> {
    let path = &config.directory;
    let text = fs::read_to_string(path).map_err(|e| {
        Failure::new(format!(
            "cannot read directory file {}: {e} (one line per peer provider: \
             `domain endpoint key-hex`)",
            path.display()
        ))
    })?;
    StaticDirectory::parse(&text)
        .map_err(|e| Failure::new(format!("directory file {}: {e}", path.display())))
}

fn warn_if_listed_with_another_key(
    config: &Config,
    directory: &StaticDirectory,
    own: &ProviderKey,
) {
    if let Some(me) = directory.entries().find(|e| e.domain == config.domain)
        && me.key != *own
    {
        tracing::warn!(
            domain = %config.domain,
            listed = %me.key,
            actual = %own,
            "the directory lists this provider with another key"
        );
    }
}

// ---------------------------------------------------------------------------------
// Subcommands

struct InitArgs {
    domain: String,
    listen: SocketAddr,
    dir: PathBuf,
    endpoint: Option<String>,
    open_registration: bool,
    echo: bool,
}

/// The configuration file `init` writes; parsed back before it is written.
fn config_text(a: &InitArgs) -> String {
    let endpoint = match &a.endpoint {
        Some(e) => format!("endpoint = {}\n", toml_string(e)),
        None => "# endpoint = \"host:port\"       # what peers dial; default: listen\n".into(),
    };
    let interop = if a.echo {
        "\n[interop]\necho = true                     # the echo bot echo@<domain> (README: Interop testing)\n"
    } else {
        "\n# [interop]\n# echo = true                   # the echo bot echo@<domain> (README: Interop testing)\n"
    };
    let limits = ProviderLimits::default();
    let quic = QuicConfig::default();
    format!(
        "# kogge-provider configuration (`kogge-provider --help`; README.md, \"Interop testing\").\n\
         # Relative paths are relative to this file's folder.\n\
         domain = {domain}\n\
         listen = {listen}\n\
         {endpoint}\
         key_file = \"provider.key\"           # Ed25519 provider key seed (hex, 0600)\n\
         data_dir = \"data\"                   # the store and the echo bot's state\n\
         directory = \"directory.txt\"         # peer providers: domain endpoint key-hex\n\
         open_registration = {open}\n\
         \n\
         # Limits (SPEC.md 16.10); uncomment to override the defaults shown.\n\
         [limits]\n\
         # max_mailbox_depth = {}\n\
         # max_remote_queue_depth = {}\n\
         # client_burst = {}\n\
         # client_rate = {}                  # per second\n\
         # provider_burst = {}\n\
         # provider_rate = {}              # per second\n\
         # fetch_burst = {}\n\
         # fetches_per_minute = {}\n\
         # one_time_burst = {}\n\
         # one_time_per_hour = {}\n\
         # relay_expiry_ms = {}\n\
         \n\
         # Connection limits of the QUIC endpoint (SPEC.md 17.4).\n\
         [transport]\n\
         # max_connections = {}\n\
         # max_connections_per_host = {}       # an IPv4 address or an IPv6 /64\n\
         # max_handshakes = {}\n\
         # udp_buffer_bytes = {}          # asked of the kernel, capped by net.core.rmem_max\n\
         \n\
         # Storage (SPEC.md 16.12): \"log\" (data/provider.klog) or \"redb\" (data/provider.redb).\n\
         [storage]\n\
         # engine = \"log\"\n\
         {interop}",
        limits.max_mailbox_depth,
        limits.max_remote_queue_depth,
        limits.client_burst,
        limits.client_rate,
        limits.provider_burst,
        limits.provider_rate,
        limits.fetch_burst,
        limits.fetches_per_minute,
        limits.one_time_burst,
        limits.one_time_per_hour,
        limits.relay_expiry_ms,
        quic.max_connections,
        quic.max_connections_per_host,
        quic.max_handshakes,
        quic.udp_buffer_bytes,
        domain = toml_string(&a.domain),
        listen = toml_string(&a.listen.to_string()),
        open = a.open_registration,
    )
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn init(a: &InitArgs) -> Result<(), Failure> {
    Domain::parse_canonical(&a.domain)
        .map_err(|e| Failure::new(format!("--domain {:?}: {e}", a.domain)))?;
    if let Some(e) = a.endpoint.as_deref().filter(|e| !valid_endpoint(e)) {
        return Err(Failure::new(format!(
            "--endpoint {e:?}: expected host:port"
        )));
    }
    let path = a.dir.join(CONFIG_FILE);
    let text = config_text(a);
    // Everything the operator gave is checked (by the same parser `run` uses) before
    // anything is written.
    let config = Config::parse(&text, &path)?;
    if path.exists() {
        return Err(Failure::new(format!(
            "{} exists already; not overwriting it",
            path.display()
        )));
    }
    create_private_dir(&a.dir)?;
    let key = load_provider_key(&config)?;
    if !config.directory.exists() {
        let header = "# kogge provider directory (SPEC.md 16.11): one peer provider per line,\n\
                      # `domain endpoint provider-key-hex`, as `kogge-provider key` prints it.\n";
        fs::write(&config.directory, header)
            .map_err(|e| Failure::io("write", &config.directory, &e))?;
    }
    fs::write(&path, &text).map_err(|e| Failure::io("write", &path, &e))?;
    config.warn_unreachable_endpoint();
    eprintln!(
        "wrote {}; add this line to the directory files of the providers this one talks to:",
        path.display()
    );
    println!("{}", config.directory_line(&key.public()));
    Ok(())
}

fn key(config_path: &Path) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    let key = load_provider_key(&config)?;
    config.warn_unreachable_endpoint();
    println!("{}", config.directory_line(&key.public()));
    Ok(())
}

fn run(config_path: &Path) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    let directory = load_directory(&config)?;
    let key = load_provider_key(&config)?;
    let public = key.public();
    warn_if_listed_with_another_key(&config, &directory, &public);
    create_private_dir(&config.data_dir)?;
    let engine = Engine::choose(config.engine, &config.data_dir);
    let database = config.data_dir.join(engine.file());
    let store = engine.open(&config.data_dir)?;
    let mut provider = ProviderConfig::new(config.domain.clone(), key);
    provider.open_registration = config.open_registration || config.echo;
    provider.limits = config.limits;
    let rng = os_rng()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.file.display(),
        domain = %config.domain,
        listen = %config.listen,
        key = %public,
        database = %database.display(),
        engine = engine.name(),
        peers = directory.entries().count(),
        open_registration = provider.open_registration,
        echo = config.echo,
        "kogge-provider starting"
    );
    config.warn_unreachable_endpoint();
    runtime.block_on(serve(&config, provider, store, rng, directory))
}

/// Serves until a signal, then stops the echo bot and the provider gracefully.
async fn serve(
    config: &Config,
    provider: ProviderConfig,
    store: AnyStore,
    rng: ChaCha20Rng,
    directory: StaticDirectory,
) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    let public = provider.key.public();
    let server = ProviderServer::start(
        provider,
        store,
        rng,
        directory,
        config.listen,
        config.quic.clone(),
    )
    .map_err(|e| {
        Failure::new(format!(
            "cannot start the provider on {}: {e}",
            config.listen
        ))
    })?;
    tracing::info!(
        domain = %config.domain,
        address = %server.local_addr(),
        key = %public,
        directory_line = %config.directory_line(&public),
        "kogge-provider running"
    );
    let bot = if config.echo {
        let bot = echo::EchoBot::start(
            &config.data_dir,
            &config.domain,
            public,
            loopback(server.local_addr()),
        );
        match bot {
            Ok(bot) => Some(bot),
            Err(e) => {
                let _ = server.shutdown().await;
                return Err(e);
            }
        }
    } else {
        None
    };

    let mut stats = tokio::time::interval(STATS_INTERVAL);
    stats.tick().await;
    let stopped = loop {
        tokio::select! {
            signal = signals.next() => {
                tracing::info!(signal, "shutting down (a second signal exits at once)");
                break None;
            }
            _ = stats.tick() => match server.stats().await {
                Ok(s) => tracing::debug!(
                    users = s.users,
                    connections = s.connections,
                    mailbox_items = s.mailbox_items,
                    outbound_items = s.outbound_items,
                    commits = s.commits,
                    "stats"
                ),
                Err(e) => break Some(Failure::new(format!("the provider stopped: {e}"))),
            },
        }
    };
    tokio::spawn(async move {
        let signal = signals.next().await;
        tracing::error!(signal, "second signal: exiting without a graceful shutdown");
        std::process::exit(1);
    });
    if let Some(bot) = bot {
        bot.shutdown().await;
    }
    let result = server.shutdown().await;
    match (stopped, result) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(Failure::new(format!("shutdown failed: {e}"))),
        (None, Ok(_)) => Ok(()),
    }
}

/// The address to reach a server listening on `addr` from this host.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// SIGINT and SIGTERM (Ctrl-C only, where there are no Unix signals).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handler = |kind| {
                signal(kind)
                    .map_err(|e| Failure::new(format!("cannot install a signal handler: {e}")))
            };
            Ok(Self {
                interrupt: handler(SignalKind::interrupt())?,
                terminate: handler(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(echo: bool) -> InitArgs {
        InitArgs {
            domain: "one.example".into(),
            listen: "127.0.0.1:4433".parse().unwrap(),
            dir: PathBuf::from("/srv/one"),
            endpoint: None,
            open_registration: false,
            echo,
        }
    }

    #[test]
    fn init_writes_a_config_that_parses_back() {
        for echo in [false, true] {
            let text = config_text(&args(echo));
            let c = Config::parse(&text, Path::new("/srv/one/kogge-provider.toml")).unwrap();
            assert_eq!(c.domain.as_str(), "one.example");
            assert_eq!(c.endpoint, "127.0.0.1:4433");
            assert_eq!(c.key_file, Path::new("/srv/one/provider.key"));
            assert_eq!(c.data_dir, Path::new("/srv/one/data"));
            assert_eq!(c.limits, ProviderLimits::default());
            assert_eq!(c.quic, QuicConfig::default());
            assert_eq!(c.engine, None);
            assert_eq!(c.echo, echo);
        }
    }

    #[test]
    fn bad_configs_name_the_line_and_field() {
        let base = "domain = \"one.example\"\nlisten = \"127.0.0.1:1\"\nkey_file = \"k\"\n\
                    data_dir = \"d\"\ndirectory = \"x\"\n";
        let path = Path::new("c.toml");
        let c = Config::parse(&format!("{base}[limits]\nmax_mailbox_depth = 7\n"), path).unwrap();
        assert_eq!(c.limits.max_mailbox_depth, 7);
        assert_eq!(c.key_file, Path::new("k"));
        let c = Config::parse(
            &format!("{base}[transport]\nmax_connections_per_host = 8\n"),
            path,
        )
        .unwrap();
        assert_eq!(c.quic.max_connections_per_host, 8);
        for (engine, want) in [("log", Engine::Log), ("redb", Engine::Redb)] {
            let text = format!("{base}[storage]\nengine = \"{engine}\"\n");
            assert_eq!(Config::parse(&text, path).unwrap().engine, Some(want));
        }
        assert_eq!(
            c.quic.max_connections,
            QuicConfig::default().max_connections
        );
        for (text, want) in [
            (format!("{base}colour = 1\n"), "line 6"),
            (base.replace("one.example", "One Example"), "line 1"),
            (base.replace("127.0.0.1:1", "localhost"), "line 2"),
            (format!("{base}[limits]\nclient_rate = 0\n"), "line 7"),
            (format!("{base}[limits]\nclient_rat = 1\n"), "client_rat"),
            (format!("{base}[transport]\nmax_handshakes = 0\n"), "line 7"),
            (format!("{base}[storage]\nengine = \"sqlite\"\n"), "line 7"),
            (format!("{base}endpoint = \"nope\"\n"), "line 6"),
            (base.replace("directory = \"x\"\n", ""), "directory"),
        ] {
            let e = Config::parse(&text, path).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn the_store_of_the_other_engine_is_not_silently_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        for (made, other) in [(Engine::Redb, Engine::Log), (Engine::Log, Engine::Redb)] {
            let data = dir.path().join(made.name());
            fs::create_dir_all(&data).unwrap();
            let mut store = made.open(&data).unwrap();
            store
                .commit(&[StoreOp::Delete {
                    table: kogge::store::Table::Meta,
                    key: bytes::Bytes::from_static(b"k"),
                }])
                .unwrap();
            drop(store);
            let e = other.open(&data).unwrap_err().to_string();
            assert!(e.contains(made.file()) && e.contains("engine"), "{e}");
            made.open(&data).unwrap();
            // Configured with no engine, a provider keeps the one it has.
            assert_eq!(Engine::choose(None, &data), made);
            assert_eq!(Engine::choose(Some(other), &data), other);
        }
        assert_eq!(Engine::choose(None, &dir.path().join("new")), Engine::Log);
    }

    #[test]
    fn hex_round_trips() {
        let secret = Secret::new([0xa5; 32]);
        let text = to_hex(secret.expose());
        assert_eq!(from_hex(&format!("{}\n", *text)).unwrap(), secret);
        assert!(from_hex("zz").is_none());
        assert!(from_hex(&"g".repeat(64)).is_none());
    }
}
