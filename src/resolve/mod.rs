//! Provider discovery (SPEC.md 16.11): from a provider domain to the endpoint where it
//! listens and the provider key it must prove. The core never resolves anything
//! itself: the provider state machine asks its driver (`ProviderOutput::Resolve`) and
//! the driver answers with what a [`Resolver`] says, so DNS or well-known lookups can
//! replace the static directory without touching the core.

use std::collections::BTreeMap;

use crate::address::Domain;
use crate::identity::ProviderKey;

/// What a resolver knows about one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The provider's domain.
    pub domain: Domain,
    /// Where it listens, as the transport understands it (for QUIC `host:port`).
    pub endpoint: String,
    /// The Ed25519 provider key it must prove on every connection.
    pub key: ProviderKey,
}

/// Why a domain could not be resolved or a directory could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolver has no entry for the domain.
    #[error("no provider known for {0}")]
    Unknown(String),
    /// A directory line is malformed (1-based line number and reason).
    #[error("directory line {line}: {reason}")]
    BadLine {
        /// The line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Maps provider domains to [`PeerInfo`].
pub trait Resolver {
    /// Looks `domain` up.
    fn resolve(&self, domain: &Domain) -> Result<PeerInfo, ResolveError>;
}

/// The first resolver: a static directory file with one provider per line,
/// `domain endpoint provider-key-hex`, separated by spaces or tabs; blank lines and
/// lines starting with `#` are ignored (SPEC.md 16.11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticDirectory {
    entries: BTreeMap<Domain, PeerInfo>,
}

use crate::limits::MAX_DIRECTORY_LEN;

impl StaticDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a directory file's text.
    pub fn parse(text: &str) -> Result<Self, ResolveError> {
        if text.len() > MAX_DIRECTORY_LEN {
            return Err(ResolveError::BadLine {
                line: 0,
                reason: "directory file too large",
            });
        }
        let mut dir = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |reason| ResolveError::BadLine { line, reason };
            let trimmed = raw.trim_matches([' ', '\t', '\r']);
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split([' ', '\t']).filter(|f| !f.is_empty());
            let (Some(domain), Some(endpoint), Some(key), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `domain endpoint key-hex`"));
            };
            let domain = Domain::parse_canonical(domain).map_err(|_| bad("invalid domain"))?;
            let key = parse_key(key).ok_or_else(|| bad("invalid provider key"))?;
            if dir.entries.contains_key(&domain) {
                return Err(bad("domain listed twice"));
            }
            dir.insert(PeerInfo {
                domain,
                endpoint: endpoint.to_owned(),
                key,
            });
        }
        Ok(dir)
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, info: PeerInfo) {
        self.entries.insert(info.domain.clone(), info);
    }

    /// The entries, by domain.
    pub fn entries(&self) -> impl Iterator<Item = &PeerInfo> + '_ {
        self.entries.values()
    }

    /// The directory as file text (parses back to the same directory).
    pub fn to_text(&self) -> String {
        let mut out = String::from("# kogge provider directory: domain endpoint provider-key\n");
        for e in self.entries.values() {
            out.push_str(&format!("{} {} {}\n", e.domain, e.endpoint, e.key));
        }
        out
    }
}

fn parse_key(hex: &str) -> Option<ProviderKey> {
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    ProviderKey::from_bytes(&bytes).ok()
}

impl Resolver for StaticDirectory {
    fn resolve(&self, domain: &Domain) -> Result<PeerInfo, ResolveError> {
        self.entries
            .get(domain)
            .cloned()
            .ok_or_else(|| ResolveError::Unknown(domain.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng;

    use super::*;
    use crate::identity::ProviderKeyPair;

    #[test]
    fn directory_round_trips_and_refuses_bad_lines() {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
        let key = ProviderKeyPair::generate(&mut rng).public();
        let text = format!("# peers\n\none.example 127.0.0.1:4433 {key}\n");
        let dir = StaticDirectory::parse(&text).unwrap();
        let one = Domain::parse("one.example").unwrap();
        assert_eq!(dir.resolve(&one).unwrap().key, key);
        assert_eq!(StaticDirectory::parse(&dir.to_text()).unwrap(), dir);
        assert!(matches!(
            dir.resolve(&Domain::parse("two.example").unwrap()),
            Err(ResolveError::Unknown(_))
        ));
        for bad in [
            "one.example 127.0.0.1:4433".to_string(),
            format!("One.example 127.0.0.1:4433 {key}"),
            format!("one.example 127.0.0.1:4433 {}", "zz".repeat(32)),
            format!("one.example 127.0.0.1:4433 {key} extra"),
            format!("one.example a {key}\none.example b {key}"),
        ] {
            assert!(
                matches!(
                    StaticDirectory::parse(&bad),
                    Err(ResolveError::BadLine { .. })
                ),
                "{bad}"
            );
        }
    }
}
