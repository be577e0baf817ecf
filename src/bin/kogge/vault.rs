//! The data directory's key, and the files sealed under it.
//!
//! A data directory holds one plaintext file, `vault`, that says how its key is made
//! (nothing in it is secret), and sealed files. The **directory key** (32 bytes) is
//!
//! * for a passphrase: Argon2id(passphrase, salt; the parameters in `vault`), or
//! * for a key file: the file's 32 random bytes (stored as 64 hex digits, mode 0600).
//!
//! It is never used directly: HKDF-SHA256 derives from it the key that seals the files
//! (`kogge-cli/v1/files`) and the storage key of the account blob (`kogge-cli/v1/account`,
//! for [`Account::save`](kogge::session::Account::save)).
//!
//! A sealed file is `"KOGGECL1" ‖ nonce (12 random bytes) ‖ ChaCha20-Poly1305(plaintext)`
//! with the associated data `"kogge-cli/v1/file/" ‖ name`, so a file cannot be swapped for
//! another of the same directory. `vault` also holds a sealed empty check value: a key that
//! opens it is the directory's key, so a wrong passphrase ([`VaultError::WrongKey`]) is told
//! apart from a file altered after it was written ([`VaultError::Tampered`]). Every write
//! goes to a temporary file (0600) that is flushed and renamed into place, and the folder
//! is flushed.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use kogge::crypto::{self, Secret};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

/// The plaintext description of the directory key.
pub(crate) const VAULT_FILE: &str = "vault";
/// The first line of `vault`.
const VAULT_HEADER: &str = "kogge-vault 1";
/// Magic of every sealed file (its layout, version 1).
const SEALED_MAGIC: &[u8; 8] = b"KOGGECL1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The name under which the check value is sealed.
const CHECK_NAME: &str = "vault-check";
/// Argon2id parameters for new directories: 64 MiB, 3 passes, 1 lane (RFC 9106's
/// second recommended option).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;
/// Bounds on parameters read from a `vault` file (it is not authenticated before the key
/// is derived, so it must not be able to make us allocate without limit).
const ARGON2_MAX_M_KIB: u32 = 4 * 1024 * 1024;
const ARGON2_MAX_T: u32 = 64;
const SALT_LEN: usize = 16;
/// Largest sealed file read.
const MAX_SEALED_LEN: u64 = 128 * 1024 * 1024;

/// Why the data directory or one of its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VaultError {
    /// The passphrase or key file does not open this directory.
    #[error("wrong passphrase or key file for the data directory {0}")]
    WrongKey(PathBuf),
    /// A sealed file does not authenticate under the directory's key: it was altered,
    /// damaged, or copied from another directory.
    #[error("{0} was altered or damaged: it does not authenticate under this directory's key")]
    Tampered(PathBuf),
    /// A file is not in a format this program reads.
    #[error("{path} is not a kogge file this version reads: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// There is no data directory here.
    #[error(
        "no kogge data directory at {0} (create one with `kogge init` or `kogge link request`)"
    )]
    Missing(PathBuf),
    /// A data directory exists already.
    #[error("{0} already holds a kogge data directory")]
    Exists(PathBuf),
    /// Another `kogge` process uses the directory.
    #[error("another kogge process is using {0}")]
    Busy(PathBuf),
    /// The key material could not be had.
    #[error("{0}")]
    Key(String),
    /// An I/O error.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl VaultError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// Where the directory key comes from.
pub(crate) enum KeySource {
    /// A passphrase (from `KOGGE_PASSPHRASE` or the terminal).
    Passphrase(Zeroizing<String>),
    /// A key file of 32 random bytes.
    KeyFile(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passphrase(_) => f.write_str("Passphrase([REDACTED])"),
            Self::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
        }
    }
}

impl KeySource {
    /// The key file if given, else the passphrase from `KOGGE_PASSPHRASE`, else one read
    /// from the terminal (twice when `new`).
    pub(crate) fn from_env(key_file: Option<&Path>, new: bool) -> Result<Self, VaultError> {
        if let Some(path) = key_file {
            return Ok(Self::KeyFile(path.to_owned()));
        }
        if let Some(p) = std::env::var_os("KOGGE_PASSPHRASE") {
            let p = Zeroizing::new(
                p.into_string()
                    .map_err(|_| VaultError::Key("KOGGE_PASSPHRASE is not UTF-8".into()))?,
            );
            if p.is_empty() {
                return Err(VaultError::Key("KOGGE_PASSPHRASE is empty".into()));
            }
            return Ok(Self::Passphrase(p));
        }
        if !io::stdin().is_terminal() {
            return Err(VaultError::Key(
                "no passphrase: set KOGGE_PASSPHRASE, give --key-file, or run in a terminal".into(),
            ));
        }
        let read = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map(Zeroizing::new)
                .map_err(|e| VaultError::Key(format!("cannot read the passphrase: {e}")))
        };
        let p = read("Passphrase for the kogge data directory: ")?;
        if p.is_empty() {
            return Err(VaultError::Key("empty passphrase".into()));
        }
        if new && *read("Same passphrase again: ")? != *p {
            return Err(VaultError::Key("the passphrases differ".into()));
        }
        Ok(Self::Passphrase(p))
    }
}

/// An open data directory: its path, the file-sealing key and the account storage key.
/// Holds an exclusive lock on the directory while it lives.
pub(crate) struct Vault {
    dir: PathBuf,
    files: Secret<32>,
    account: Secret<32>,
    _lock: fs::File,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How the key is derived, as written in `vault`.
struct Params {
    kind: Kind,
    salt: Vec<u8>,
    m_kib: u32,
    t: u32,
    p: u32,
    check: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Passphrase,
    KeyFile,
}

impl Vault {
    /// Creates a data directory in `dir` (which must not hold one) with a key from
    /// `source`. A key file that does not exist is created (0600).
    pub(crate) fn create<R: CryptoRng>(
        dir: &Path,
        source: &KeySource,
        rng: &mut R,
    ) -> Result<Self, VaultError> {
        create_private_dir(dir)?;
        let lock = lock(dir)?;
        let path = dir.join(VAULT_FILE);
        if path.exists() {
            return Err(VaultError::Exists(dir.to_owned()));
        }
        let mut salt = vec![0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let (kind, master) = match source {
            KeySource::Passphrase(p) => (
                Kind::Passphrase,
                argon2id(p.as_bytes(), &salt, ARGON2_M_KIB, ARGON2_T, ARGON2_P)?,
            ),
            KeySource::KeyFile(file) => (Kind::KeyFile, load_or_create_key_file(file, rng)?),
        };
        let (files, account) = derive(&master);
        let check = seal(&files, CHECK_NAME, &[], rng);
        let params = Params {
            kind,
            salt,
            m_kib: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
            check,
        };
        write_atomic(&path, params.to_text().as_bytes())?;
        Ok(Self {
            dir: dir.to_owned(),
            files,
            account,
            _lock: lock,
        })
    }

    /// Opens the data directory in `dir` with a key from `source`.
    pub(crate) fn open(dir: &Path, source: &KeySource) -> Result<Self, VaultError> {
        let path = dir.join(VAULT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VaultError::Missing(dir.to_owned()));
            }
            Err(e) => return Err(VaultError::io("read", &path, e)),
        };
        let params = Params::parse(&text).map_err(|why| VaultError::Format {
            path: path.clone(),
            why,
        })?;
        let lock = lock(dir)?;
        let master = match (params.kind, source) {
            (Kind::Passphrase, KeySource::Passphrase(p)) => {
                argon2id(p.as_bytes(), &params.salt, params.m_kib, params.t, params.p)?
            }
            (Kind::KeyFile, KeySource::KeyFile(file)) => read_key_file(file)?,
            (Kind::Passphrase, KeySource::KeyFile(_)) => {
                return Err(VaultError::Key(format!(
                    "{} is protected by a passphrase, not a key file",
                    dir.display()
                )));
            }
            (Kind::KeyFile, KeySource::Passphrase(_)) => {
                return Err(VaultError::Key(format!(
                    "{} is protected by a key file: give --key-file",
                    dir.display()
                )));
            }
        };
        let (files, account) = derive(&master);
        open_sealed(&files, CHECK_NAME, &params.check)
            .map_err(|_| VaultError::WrongKey(dir.to_owned()))?;
        Ok(Self {
            dir: dir.to_owned(),
            files,
            account,
            _lock: lock,
        })
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage key of the account blob.
    pub(crate) fn account_key(&self) -> &Secret<32> {
        &self.account
    }

    /// Seals `plaintext` into the file `name`, atomically and durably.
    pub(crate) fn write<R: CryptoRng>(
        &self,
        name: &str,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<(), VaultError> {
        write_atomic(
            &self.dir.join(name),
            &seal(&self.files, name, plaintext, rng),
        )
    }

    /// Opens the sealed file `name`; `None` if it does not exist.
    pub(crate) fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let path = self.dir.join(name);
        let sealed = match read_bounded(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VaultError::io("read", &path, e)),
        };
        match open_sealed(&self.files, name, &sealed) {
            Ok(p) => Ok(Some(p)),
            Err(OpenFailure::Format(why)) => Err(VaultError::Format { path, why }),
            Err(OpenFailure::Authentication) => Err(VaultError::Tampered(path)),
        }
    }

    /// Deletes the file `name` if it exists.
    pub(crate) fn remove(&self, name: &str) -> Result<(), VaultError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VaultError::io("delete", &path, e)),
        }
    }
}

impl Params {
    fn to_text(&self) -> String {
        let mut s = String::new();
        let kind = match self.kind {
            Kind::Passphrase => "passphrase",
            Kind::KeyFile => "key-file",
        };
        let _ = writeln!(s, "{VAULT_HEADER}");
        let _ = writeln!(
            s,
            "# How this kogge data directory's key is made. Not secret."
        );
        let _ = writeln!(s, "kind {kind}");
        let _ = writeln!(s, "argon2id m={} t={} p={}", self.m_kib, self.t, self.p);
        let _ = writeln!(s, "salt {}", to_hex(&self.salt).as_str());
        let _ = writeln!(s, "check {}", to_hex(&self.check).as_str());
        s
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().filter(|l| !l.starts_with('#'));
        if lines.next() != Some(VAULT_HEADER) {
            return Err(format!("the first line is not {VAULT_HEADER:?}"));
        }
        let (mut kind, mut salt, mut check, mut argon) = (None, None, None, None);
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "kind" => {
                    kind = Some(match value {
                        "passphrase" => Kind::Passphrase,
                        "key-file" => Kind::KeyFile,
                        other => return Err(format!("unknown kind {other:?}")),
                    });
                }
                "argon2id" => argon = Some(parse_argon(value)?),
                "salt" => salt = Some(from_hex(value).ok_or("salt is not hex")?),
                "check" => check = Some(from_hex(value).ok_or("check is not hex")?),
                "" => {}
                other => return Err(format!("unknown line {other:?}")),
            }
        }
        let (m_kib, t, p) = argon.ok_or("no argon2id line")?;
        Ok(Self {
            kind: kind.ok_or("no kind line")?,
            salt: salt.ok_or("no salt line")?,
            m_kib,
            t,
            p,
            check: check.ok_or("no check line")?,
        })
    }
}

fn parse_argon(value: &str) -> Result<(u32, u32, u32), String> {
    let (mut m, mut t, mut p) = (None, None, None);
    for part in value.split_whitespace() {
        let (k, v) = part.split_once('=').ok_or("argon2id: expected k=v")?;
        let v: u32 = v.parse().map_err(|_| format!("argon2id: bad {k}"))?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return Err(format!("argon2id: unknown parameter {k}")),
        }
    }
    let (m, t, p) = (
        m.ok_or("argon2id: no m")?,
        t.ok_or("argon2id: no t")?,
        p.ok_or("argon2id: no p")?,
    );
    if m > ARGON2_MAX_M_KIB || t > ARGON2_MAX_T || !(1..=16).contains(&p) {
        return Err("argon2id parameters out of bounds".into());
    }
    Ok((m, t, p))
}

fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Secret<32>, VaultError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| VaultError::Key(format!("argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut_slice())
        .map_err(|e| VaultError::Key(format!("argon2id: {e}")))?;
    Ok(Secret::new(*out))
}

/// The file-sealing key and the account key, from the directory key.
fn derive(master: &Secret<32>) -> (Secret<32>, Secret<32>) {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, master.expose());
    let mut files = Zeroizing::new([0u8; 32]);
    let mut account = Zeroizing::new([0u8; 32]);
    // Expanding 32 bytes from SHA-256 cannot fail.
    let _ = hk.expand(b"kogge-cli/v1/files", files.as_mut_slice());
    let _ = hk.expand(b"kogge-cli/v1/account", account.as_mut_slice());
    (Secret::new(*files), Secret::new(*account))
}

fn aad(name: &str) -> Vec<u8> {
    [b"kogge-cli/v1/file/".as_slice(), name.as_bytes()].concat()
}

fn seal<R: CryptoRng>(key: &Secret<32>, name: &str, plaintext: &[u8], rng: &mut R) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    // Sealing fails only for plaintexts beyond ChaCha20-Poly1305's 256 GiB.
    let ciphertext = crypto::aead_seal(key, &nonce, &aad(name), plaintext).unwrap_or_default();
    [SEALED_MAGIC.as_slice(), &nonce, &ciphertext].concat()
}

enum OpenFailure {
    Format(String),
    Authentication,
}

fn open_sealed(
    key: &Secret<32>,
    name: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailure> {
    let Some(rest) = sealed.strip_prefix(SEALED_MAGIC.as_slice()) else {
        return Err(OpenFailure::Format(
            "it does not start with KOGGECL1".into(),
        ));
    };
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenFailure::Format("it is truncated".into()));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    crypto::aead_open(key, &n, &aad(name), ciphertext).map_err(|_| OpenFailure::Authentication)
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut out = Vec::new();
    file.take(MAX_SEALED_LEN + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_SEALED_LEN {
        return Err(io::Error::other("file too large"));
    }
    Ok(out)
}

/// Takes the directory's lock (released when the returned file closes, also on a crash).
fn lock(dir: &Path) -> Result<fs::File, VaultError> {
    let path = dir.join("lock");
    let mut options = fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .map_err(|e| VaultError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(VaultError::Busy(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(VaultError::io("lock", &path, e)),
    }
}

fn read_key_file(path: &Path) -> Result<Secret<32>, VaultError> {
    let bytes =
        Zeroizing::new(fs::read(path).map_err(|e| VaultError::io("read key file", path, e))?);
    check_private(path);
    parse_key(&bytes).ok_or_else(|| {
        VaultError::Key(format!(
            "key file {} holds neither 32 bytes nor 64 hex digits",
            path.display()
        ))
    })
}

/// 32 raw bytes, or 64 hex digits (surrounding white space ignored).
fn parse_key(bytes: &[u8]) -> Option<Secret<32>> {
    if bytes.len() == 32 {
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(bytes);
        return Some(Secret::new(*k));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let v = Zeroizing::new(from_hex(text)?);
    let mut k = Zeroizing::new([0u8; 32]);
    if v.len() != 32 {
        return None;
    }
    k.copy_from_slice(&v);
    Some(Secret::new(*k))
}

fn load_or_create_key_file<R: CryptoRng>(
    path: &Path,
    rng: &mut R,
) -> Result<Secret<32>, VaultError> {
    if path.exists() {
        return read_key_file(path);
    }
    let mut k = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(k.as_mut_slice());
    let mut text = to_hex(k.as_slice());
    text.push('\n');
    write_atomic(path, text.as_bytes())?;
    Ok(Secret::new(*k))
}

/// Lower-case hex, in memory that is wiped on drop.
pub(crate) fn to_hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses hex (either case); `None` if it is not an even number of hex digits.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

/// Writes `bytes` to `path` with owner-only permissions (0600), durably: to a temporary
/// file, flushed, renamed into place, and the folder flushed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(|e| VaultError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| VaultError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| VaultError::io("rename into place", path, e))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot flush folder");
    }
}

/// Creates the folder (and its parents) with owner-only permissions where new.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), VaultError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| VaultError::io("create folder", dir, e))
}

/// Warns if a secret file can be read by anyone but its owner.
fn check_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "kogge: warning: {} is accessible to others (mode {:o}); `chmod 600` it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([7; 32])
    }

    fn pass(p: &str) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(p.to_owned()))
    }

    #[test]
    fn round_trip_with_passphrase_and_wrong_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let mut rng = rng();
        let v = Vault::create(&dir, &pass("correct horse"), &mut rng).unwrap();
        v.write("state", b"secret state", &mut rng).unwrap();
        assert_eq!(
            v.read("state").unwrap().unwrap().as_slice(),
            b"secret state"
        );
        assert!(v.read("nothing").unwrap().is_none());
        // The plaintext is nowhere on disk.
        let raw = fs::read(dir.join("state")).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        drop(v);
        let v = Vault::open(&dir, &pass("correct horse")).unwrap();
        assert_eq!(
            v.read("state").unwrap().unwrap().as_slice(),
            b"secret state"
        );
        drop(v);
        assert!(matches!(
            Vault::open(&dir, &pass("wrong horse")),
            Err(VaultError::WrongKey(_))
        ));
        assert!(matches!(
            Vault::open(&tmp.path().join("none"), &pass("x")),
            Err(VaultError::Missing(_))
        ));
        assert!(matches!(
            Vault::create(&dir, &pass("x"), &mut rng),
            Err(VaultError::Exists(_))
        ));
    }

    #[test]
    fn tampered_or_swapped_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let mut rng = rng();
        let v = Vault::create(&dir, &pass("p"), &mut rng).unwrap();
        v.write("state", b"one", &mut rng).unwrap();
        v.write("identity", b"two", &mut rng).unwrap();
        let path = dir.join("state");
        let good = fs::read(&path).unwrap();
        // Every single flipped bit after the magic is caught.
        for i in SEALED_MAGIC.len()..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            assert!(
                matches!(v.read("state"), Err(VaultError::Tampered(_))),
                "byte {i}"
            );
        }
        // A file moved under another name does not open.
        fs::copy(dir.join("identity"), &path).unwrap();
        assert!(matches!(v.read("state"), Err(VaultError::Tampered(_))));
        // Garbage and truncation are format errors.
        fs::write(&path, b"hello").unwrap();
        assert!(matches!(v.read("state"), Err(VaultError::Format { .. })));
        fs::write(&path, &good[..20]).unwrap();
        assert!(matches!(v.read("state"), Err(VaultError::Format { .. })));
    }

    #[test]
    fn key_file_is_created_private_and_required() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let key = tmp.path().join("k.key");
        let mut rng = rng();
        let v = Vault::create(&dir, &KeySource::KeyFile(key.clone()), &mut rng).unwrap();
        v.write("state", b"x", &mut rng).unwrap();
        drop(v);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.join("state"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let v = Vault::open(&dir, &KeySource::KeyFile(key.clone())).unwrap();
        assert_eq!(v.read("state").unwrap().unwrap().as_slice(), b"x");
        drop(v);
        // Another key file: wrong key. A passphrase: refused with a reason.
        let other = tmp.path().join("other.key");
        fs::write(&other, [9u8; 32]).unwrap();
        assert!(matches!(
            Vault::open(&dir, &KeySource::KeyFile(other)),
            Err(VaultError::WrongKey(_))
        ));
        assert!(matches!(
            Vault::open(&dir, &pass("p")),
            Err(VaultError::Key(_))
        ));
    }

    #[test]
    fn one_process_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let key = KeySource::KeyFile(tmp.path().join("k"));
        let _v = Vault::create(&dir, &key, &mut rng()).unwrap();
        assert!(matches!(Vault::open(&dir, &key), Err(VaultError::Busy(_))));
    }

    #[test]
    fn vault_file_parses_back_and_bounds_parameters() {
        let p = Params {
            kind: Kind::Passphrase,
            salt: vec![1; 16],
            m_kib: 8,
            t: 1,
            p: 1,
            check: vec![2; 36],
        };
        let text = p.to_text();
        let q = Params::parse(&text).unwrap();
        assert_eq!(
            (q.salt, q.m_kib, q.t, q.p, q.check),
            (p.salt, 8, 1, 1, p.check)
        );
        let huge = text.replace("m=8", "m=4294967295");
        assert!(Params::parse(&huge).is_err());
        assert!(Params::parse("something else").is_err());
    }
}
