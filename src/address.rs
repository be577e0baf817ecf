//! Addresses `user@provider` and provider domains: parsed once, by one type each.
//!
//! The grammar (SPEC.md section 3), after ASCII case folding:
//!
//! ```text
//! address    = local-part "@" domain                 ; at most 318 bytes
//! local-part = alnum *( [ "." / "_" / "-" ] alnum )  ; 1..=64 bytes, no "..", "._" etc.
//! domain     = label *( "." label )                  ; 1..=253 bytes, no trailing dot
//! label      = alnum [ *( alnum / "-" ) alnum ]      ; 1..=63 bytes
//! alnum      = "a"-"z" / "0"-"9"
//! ```
//!
//! The last label of a domain must not be all digits (so that no IPv4 literal is a
//! domain). Non-ASCII is refused: internationalised domains travel as their A-label
//! (`xn--…`) form. [`Address::parse`] folds `A`-`Z` to lower case (for user input);
//! [`Address::parse_canonical`] refuses anything not already canonical (for wire data,
//! so that every address has exactly one encoding).

use std::fmt;
use std::str::FromStr;

use crate::limits::{MAX_ADDRESS_LEN, MAX_DOMAIN_LABEL_LEN, MAX_DOMAIN_LEN, MAX_LOCAL_PART_LEN};

/// Why a string is not a valid address or domain. Positions are byte offsets into the
/// part named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The input is empty.
    #[error("address is empty")]
    Empty,
    /// The input is longer than the grammar allows.
    #[error("{what} is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Which part: "address", "local part", "domain" or "domain label".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// There is no `@`.
    #[error("address has no '@'")]
    MissingAt,
    /// The local part (before `@`) is empty.
    #[error("local part is empty")]
    EmptyLocalPart,
    /// A byte that the part does not allow (this includes any non-ASCII byte and a second `@`).
    #[error("{what} has an invalid character {byte:#04x} at byte {index}")]
    InvalidChar {
        /// "local part" or "domain".
        what: &'static str,
        /// The byte offset within that part.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The local part starts or ends with `.`, `_` or `-`, or has two of them in a row.
    #[error("local part has a misplaced separator at byte {index}")]
    MisplacedSeparator {
        /// The byte offset within the local part.
        index: usize,
    },
    /// The domain is empty.
    #[error("domain is empty")]
    EmptyDomain,
    /// A domain label is empty (leading, trailing or doubled dot).
    #[error("domain has an empty label")]
    EmptyLabel,
    /// A domain label starts or ends with `-`.
    #[error("domain label starts or ends with '-'")]
    LabelHyphen,
    /// The last label of the domain is all digits.
    #[error("domain's last label is numeric")]
    NumericTopLabel,
    /// The input was not in canonical form (it has upper-case letters).
    #[error("not in canonical (lower-case) form")]
    NotCanonical,
}

/// A provider's domain name, such as `one.example`. Canonical (lower case) once parsed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(Box<str>);

/// A user address `local@domain`, canonical (lower case) once parsed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    text: Box<str>,
    at: usize,
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), AddressError> {
    if len > max {
        return Err(AddressError::TooLong { what, len, max });
    }
    Ok(())
}

fn validate_local(local: &[u8]) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    check_len("local part", local.len(), MAX_LOCAL_PART_LEN)?;
    let mut prev_sep = true; // a separator may not come first
    for (index, &b) in local.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'.' | b'_' | b'-' => {
                if prev_sep {
                    return Err(AddressError::MisplacedSeparator { index });
                }
                prev_sep = true;
            }
            _ => {
                return Err(AddressError::InvalidChar {
                    what: "local part",
                    index,
                    byte: b,
                });
            }
        }
    }
    if prev_sep {
        return Err(AddressError::MisplacedSeparator {
            index: local.len() - 1,
        });
    }
    Ok(())
}

fn validate_domain(domain: &[u8]) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    check_len("domain", domain.len(), MAX_DOMAIN_LEN)?;
    let mut offset = 0;
    let mut last_numeric = false;
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(AddressError::EmptyLabel);
        }
        check_len("domain label", label.len(), MAX_DOMAIN_LABEL_LEN)?;
        for (i, &b) in label.iter().enumerate() {
            if !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-') {
                return Err(AddressError::InvalidChar {
                    what: "domain",
                    index: offset + i,
                    byte: b,
                });
            }
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err(AddressError::LabelHyphen);
        }
        last_numeric = label.iter().all(u8::is_ascii_digit);
        offset += label.len() + 1;
    }
    if last_numeric {
        return Err(AddressError::NumericTopLabel);
    }
    Ok(())
}

fn fold(input: &str, canonical_only: bool) -> Result<String, AddressError> {
    if canonical_only {
        refuse_upper_case(input)?;
    }
    Ok(input.to_ascii_lowercase())
}

/// Wire data is canonical: no ASCII upper case.
fn refuse_upper_case(input: &str) -> Result<(), AddressError> {
    if input.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(AddressError::NotCanonical);
    }
    Ok(())
}

/// Maps and sets keyed by [`Domain`] can be searched with the domain's text, without
/// building a `Domain` (its hash, equality and order are those of the text).
impl std::borrow::Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Domain {
    /// Parses user input, folding ASCII upper case to lower case.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        Self::parse_inner(input, false)
    }

    /// Parses wire data: refuses anything that is not already canonical.
    pub fn parse_canonical(input: &str) -> Result<Self, AddressError> {
        Self::parse_inner(input, true)
    }

    fn parse_inner(input: &str, canonical_only: bool) -> Result<Self, AddressError> {
        if input.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        check_len("domain", input.len(), MAX_DOMAIN_LEN)?;
        let text = fold(input, canonical_only)?;
        validate_domain(text.as_bytes())?;
        Ok(Self(text.into_boxed_str()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Address {
    /// Parses user input, folding ASCII upper case to lower case.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        Self::parse_inner(input, false)
    }

    /// Parses wire data: refuses anything that is not already canonical.
    pub fn parse_canonical(input: &str) -> Result<Self, AddressError> {
        Self::parse_inner(input, true)
    }

    /// [`Address::parse_canonical`] of a `String` the caller gives up: the address keeps
    /// its buffer instead of copying it (decoders call this for every envelope).
    pub(crate) fn parse_canonical_owned(input: String) -> Result<Self, AddressError> {
        let at = Self::find_at(&input)?;
        refuse_upper_case(&input)?;
        Self::validated(input, at)
    }

    fn parse_inner(input: &str, canonical_only: bool) -> Result<Self, AddressError> {
        let at = Self::find_at(input)?;
        Self::validated(fold(input, canonical_only)?, at)
    }

    /// The position of the `@`, after the checks that bound the work.
    fn find_at(input: &str) -> Result<usize, AddressError> {
        if input.is_empty() {
            return Err(AddressError::Empty);
        }
        // Bound the work before looking at the content.
        check_len("address", input.len(), MAX_ADDRESS_LEN)?;
        input.find('@').ok_or(AddressError::MissingAt)
    }

    /// `text` (lower case, with its `@` at `at`) as an address, if both parts are valid.
    fn validated(text: String, at: usize) -> Result<Self, AddressError> {
        let (local, rest) = text.as_bytes().split_at(at);
        validate_local(local)?;
        validate_domain(rest.get(1..).unwrap_or_default())?;
        Ok(Self {
            text: text.into_boxed_str(),
            at,
        })
    }

    /// Builds an address from an already valid local part and domain.
    pub fn new(local: &str, domain: &Domain) -> Result<Self, AddressError> {
        let mut text = String::with_capacity(local.len() + 1 + domain.0.len());
        text.push_str(local);
        text.push('@');
        text.push_str(&domain.0);
        Self::parse(&text)
    }

    /// The canonical text `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The part before `@`.
    pub fn local_part(&self) -> &str {
        self.text.get(..self.at).unwrap_or_default()
    }

    /// The provider domain, after `@`.
    pub fn domain_str(&self) -> &str {
        self.text.get(self.at + 1..).unwrap_or_default()
    }

    /// The provider domain as a [`Domain`].
    pub fn domain(&self) -> Domain {
        Domain(self.domain_str().into())
    }

    /// Whether this address belongs to the given provider.
    pub fn is_at(&self, domain: &Domain) -> bool {
        self.domain_str() == domain.as_str()
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for Domain {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.text)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_splits() {
        let a = Address::parse("Alice.Smith@One.Example").unwrap();
        assert_eq!(a.as_str(), "alice.smith@one.example");
        assert_eq!(a.local_part(), "alice.smith");
        assert_eq!(a.domain_str(), "one.example");
        assert!(a.is_at(&Domain::parse("ONE.example").unwrap()));
        assert_eq!(
            Address::parse_canonical("Alice@one.example"),
            Err(AddressError::NotCanonical)
        );
        assert!(Address::parse_canonical("alice@one.example").is_ok());
    }

    #[test]
    fn accepts_edges() {
        let local = "a".repeat(MAX_LOCAL_PART_LEN);
        let label = "b".repeat(MAX_DOMAIN_LABEL_LEN);
        // 3 labels of 63 + 1 of 61, with dots: 63*3 + 61 + 3 = 253
        let domain = format!("{label}.{label}.{label}.{}", "c".repeat(61));
        assert_eq!(domain.len(), MAX_DOMAIN_LEN);
        let addr = format!("{local}@{domain}");
        assert_eq!(addr.len(), MAX_ADDRESS_LEN);
        assert!(Address::parse(&addr).is_ok());
        assert!(Address::parse("a@localhost").is_ok());
        assert!(Address::parse("a-b_c.d9@xn--bcher-kva.example").is_ok());
        assert!(Address::parse("0@a1.b-c.d").is_ok());
    }

    #[test]
    fn rejects_with_reasons() {
        use AddressError::*;
        let cases: &[(&str, AddressError)] = &[
            ("", Empty),
            ("alice", MissingAt),
            ("@one.example", EmptyLocalPart),
            ("alice@", EmptyDomain),
            (
                "al ice@x.y",
                InvalidChar {
                    what: "local part",
                    index: 2,
                    byte: b' ',
                },
            ),
            (
                "a@b@c.d",
                InvalidChar {
                    what: "domain",
                    index: 1,
                    byte: b'@',
                },
            ),
            (".alice@x.y", MisplacedSeparator { index: 0 }),
            ("alice.@x.y", MisplacedSeparator { index: 5 }),
            ("al..ice@x.y", MisplacedSeparator { index: 3 }),
            ("al-_ice@x.y", MisplacedSeparator { index: 3 }),
            ("alice@x..y", EmptyLabel),
            ("alice@.x.y", EmptyLabel),
            ("alice@x.y.", EmptyLabel),
            ("alice@-x.y", LabelHyphen),
            ("alice@x-.y", LabelHyphen),
            ("alice@1.2.3.4", NumericTopLabel),
            (
                "alice@x_y.z",
                InvalidChar {
                    what: "domain",
                    index: 1,
                    byte: b'_',
                },
            ),
            (
                "alicé@x.y",
                InvalidChar {
                    what: "local part",
                    index: 4,
                    byte: 0xc3,
                },
            ),
            (
                "alice@bücher.example",
                InvalidChar {
                    what: "domain",
                    index: 1,
                    byte: 0xc3,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Address::parse(input).as_ref(), Err(want), "input {input:?}");
        }
        let long_local = format!("{}@x.y", "a".repeat(65));
        assert!(matches!(
            Address::parse(&long_local),
            Err(TooLong {
                what: "local part",
                len: 65,
                ..
            })
        ));
        let long_label = format!("a@{}.y", "b".repeat(64));
        assert!(matches!(
            Address::parse(&long_label),
            Err(TooLong {
                what: "domain label",
                len: 64,
                ..
            })
        ));
        let huge = "a".repeat(10_000);
        assert!(matches!(
            Address::parse(&huge),
            Err(TooLong {
                what: "address",
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_is_idempotent(s in "\\PC{0,80}") {
            if let Ok(a) = Address::parse(&s) {
                let again = Address::parse_canonical(a.as_str()).unwrap();
                proptest::prop_assert_eq!(a, again);
            }
        }

        /// The owned-buffer parser decoders use agrees with `parse_canonical` on any text,
        /// address-like or not, errors included.
        #[test]
        fn owned_parse_agrees_with_parse_canonical(
            s in "\\PC{0,80}|[a-zA-Z0-9._-]{0,12}@[a-zA-Z0-9.-]{0,20}|[a-z0-9.-]{60,70}@[a-z]{250,255}",
        ) {
            let owned = Address::parse_canonical_owned(s.clone());
            proptest::prop_assert_eq!(owned, Address::parse_canonical(&s));
        }

        #[test]
        fn generated_addresses_round_trip(
            local in "[a-z0-9]([a-z0-9]|[._-][a-z0-9]){0,20}",
            domain in "[a-z0-9]{1,10}(\\.[a-z][a-z0-9]{0,9}){1,3}",
        ) {
            let text = format!("{local}@{domain}");
            let a = Address::parse_canonical(&text).unwrap();
            proptest::prop_assert_eq!(a.as_str(), text.as_str());
            proptest::prop_assert_eq!(a.domain_str(), domain.as_str());
        }
    }
}
