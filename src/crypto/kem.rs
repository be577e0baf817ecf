//! ML-KEM-768 (FIPS 203), wrapped once with a byte-slice interface (SPEC.md 15.1).

use ml_kem::{Decapsulate, DecapsulationKey, EncapsulationKey, KeyExport, MlKem768};
use rand_core::CryptoRng;

use super::{CryptoError, Secret};

/// Length of an ML-KEM-768 encapsulation (public) key.
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;

type Dk = DecapsulationKey<MlKem768>;
type Ek = EncapsulationKey<MlKem768>;

fn decapsulation_key(seed: &Secret<64>) -> Dk {
    Dk::from_seed(ml_kem::Seed::from(*seed.expose()))
}

fn encapsulation_key(public: &[u8]) -> Result<Ek, CryptoError> {
    let key = ml_kem::Key::<Ek>::try_from(public).map_err(|_| CryptoError::InvalidPublicKey)?;
    Ek::new(&key).map_err(|_| CryptoError::InvalidPublicKey)
}

/// An ML-KEM-768 decapsulation key, expanded from its seed once (expansion costs about
/// as much as a decapsulation). Boxed, wiped on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct KemDecapsulationKey(Box<Dk>);

impl KemDecapsulationKey {
    /// Expands the key pair with this 64-byte seed (FIPS 203 `d ‖ z`).
    pub fn from_seed(seed: &Secret<64>) -> Self {
        Self(Box::new(decapsulation_key(seed)))
    }

    /// The encapsulation (public) key.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.encapsulation_key().to_bytes().to_vec()
    }

    /// Decapsulates `ciphertext`. A malformed-but-well-sized ciphertext yields an
    /// unrelated secret (implicit rejection), never an error.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<Secret<32>, CryptoError> {
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ciphertext)
            .map_err(|_| CryptoError::Length)?;
        let shared = self.0.decapsulate(&ct);
        let mut out = Secret::<32>::zeroed();
        out.expose_mut().copy_from_slice(&shared);
        Ok(out)
    }
}

impl std::fmt::Debug for KemDecapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KemDecapsulationKey([REDACTED])")
    }
}

/// The encapsulation key of the key pair with this 64-byte seed (FIPS 203 `d ‖ z`).
pub fn kem_public_key(seed: &Secret<64>) -> Vec<u8> {
    KemDecapsulationKey::from_seed(seed).public_key()
}

/// Checks that bytes are a valid encapsulation key (length and the FIPS 203 modulus check).
pub fn kem_check_public_key(public: &[u8]) -> Result<(), CryptoError> {
    encapsulation_key(public).map(|_| ())
}

/// Encapsulates to `public` with randomness from `rng`: (ciphertext, shared secret).
pub fn kem_encapsulate<R: CryptoRng + ?Sized>(
    public: &[u8],
    rng: &mut R,
) -> Result<(Vec<u8>, Secret<32>), CryptoError> {
    let mut m = Secret::<32>::zeroed();
    rng.fill_bytes(m.expose_mut());
    kem_encapsulate_deterministic(public, &m)
}

/// Encapsulation with explicit randomness `m` (FIPS 203 `ML-KEM.Encaps_internal`), for
/// test vectors. Never reuse `m`.
pub fn kem_encapsulate_deterministic(
    public: &[u8],
    m: &Secret<32>,
) -> Result<(Vec<u8>, Secret<32>), CryptoError> {
    let ek = encapsulation_key(public)?;
    let (ct, shared) = ek.encapsulate_deterministic(&ml_kem::B32::from(*m.expose()));
    let mut out = Secret::<32>::zeroed();
    out.expose_mut().copy_from_slice(&shared);
    Ok((ct.to_vec(), out))
}

/// Decapsulates `ciphertext` with the key pair of `seed`. A malformed-but-well-sized
/// ciphertext yields an unrelated secret (implicit rejection), never an error.
pub fn kem_decapsulate(seed: &Secret<64>, ciphertext: &[u8]) -> Result<Secret<32>, CryptoError> {
    KemDecapsulationKey::from_seed(seed).decapsulate(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let seed = Secret::new([7u8; 64]);
        let pk = kem_public_key(&seed);
        assert_eq!(pk.len(), KEM_PUBLIC_KEY_LEN);
        kem_check_public_key(&pk).unwrap();
        let (ct, ss) = kem_encapsulate_deterministic(&pk, &Secret::new([1u8; 32])).unwrap();
        assert_eq!(ct.len(), KEM_CIPHERTEXT_LEN);
        assert_eq!(kem_decapsulate(&seed, &ct).unwrap(), ss);
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_ne!(kem_decapsulate(&seed, &bad).unwrap(), ss);
        assert!(kem_decapsulate(&seed, &ct[1..]).is_err());
        assert!(kem_check_public_key(&pk[1..]).is_err());
        // A coefficient >= q (all 0xff bytes) fails the modulus check.
        assert!(kem_check_public_key(&[0xffu8; KEM_PUBLIC_KEY_LEN]).is_err());
    }
}
